//! Checks on `template.yaml` (the SAM template) that `cfn-lint` cannot make: they relate
//! resources to each other, to the Cargo workspace and to constants in the code.
//!
//! Each check is a function from the parsed template to a readable error. The tests at the
//! top run them on `template.yaml`; the `*_is_caught` tests at the bottom feed each check a
//! broken copy, so a check that can no longer fail is noticed.
//!
//! The template uses CloudFormation short tags (`!Ref`, `!Sub`, `!GetAtt`, `!If`), which
//! `yaml_serde` keeps as `Value::Tagged`; the long forms (`Ref:`, `Fn::Sub:`) are accepted too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use ebra_shared::config::WEBHOOK_PATH;
use yaml_serde::Value;

type Check = Result<(), String>;

const SERVERLESS_FUNCTION: &str = "AWS::Serverless::Function";

/// The routes the API must expose, and which of them are public.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/calls"),
    ("GET", "/calls"),
    ("GET", "/calls/{id}"),
    ("PATCH", "/calls/{id}"),
    ("POST", "/calls/{id}/cancel"),
    ("GET", "/calls/{id}/webhooks"),
    ("GET", "/calls/{id}/events"),
    ("POST", "/events/{id}/redeliver"),
    ("POST", "/campaigns"),
    ("GET", "/campaigns"),
    ("GET", "/campaigns/{id}"),
    ("POST", "/campaigns/{id}/pause"),
    ("POST", "/campaigns/{id}/resume"),
    ("POST", "/campaigns/{id}/cancel"),
    ("POST", "/campaigns/{id}/calls"),
    ("POST", "/webhook-endpoints"),
    ("GET", "/webhook-endpoints"),
    ("GET", "/webhook-endpoints/{id}"),
    ("PATCH", "/webhook-endpoints/{id}"),
    ("DELETE", "/webhook-endpoints/{id}"),
    ("POST", "/webhook-endpoints/{id}/rotate-secret"),
    ("POST", "/suppressions"),
    ("GET", "/suppressions"),
    ("GET", "/suppressions/{phone}"),
    ("PUT", "/suppressions/{phone}"),
    ("DELETE", "/suppressions/{phone}"),
    ("GET", "/metrics"),
    ("GET", "/metrics/history"),
    ("GET", "/openapi.json"),
    ("GET", "/console"),
    ("GET", "/console/{proxy+}"),
];
/// The OpenAPI document and the console's static files (the page authenticates its API calls).
const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("GET", "/openapi.json"),
    ("GET", "/console"),
    ("GET", "/console/{proxy+}"),
];

// ---------------------------------------------------------------------------------------------
// The checks, run on template.yaml
// ---------------------------------------------------------------------------------------------

#[test]
fn worker_concurrency_bounds_come_from_global_concurrency() {
    run(check_worker_concurrency(&template()));
}

#[test]
fn calls_queue_visibility_is_at_least_six_worker_timeouts() {
    run(check_visibility_timeout(&template()));
}

#[test]
fn every_function_builds_an_existing_cargo_binary() {
    run(check_build_metadata(&template(), &workspace_root()));
}

#[test]
fn worker_hands_the_provider_the_webhook_function_url() {
    run(check_webhook_url(&template()));
}

#[test]
fn max_receive_count_env_and_redrive_policy_share_one_parameter() {
    run(check_max_receive_count(&template()));
}

#[test]
fn secrets_are_dynamic_references() {
    run(check_secrets(&template()));
}

#[test]
fn the_provider_parameter_offers_exactly_the_providers_ebra_speaks() {
    run(check_provider(&template()));
}

#[test]
fn api_routes_are_all_wired_and_authenticated() {
    run(check_api_routes(&template()));
}

#[test]
fn calls_at_cap_alarm_reads_the_reclaimer_metric() {
    run(check_in_progress_metric(&template()));
}

#[test]
fn the_notifier_has_its_queue_dlq_alarms_and_senders() {
    run(check_notifier(&template()));
}

fn run(result: Check) {
    if let Err(message) = result {
        panic!("template.yaml: {message}");
    }
}

// (a) ReservedConcurrentExecutions and ScalingConfig.MaximumConcurrency from one parameter.
fn check_worker_concurrency(doc: &Value) -> Check {
    let (id, worker, event) = worker(doc)?;
    let reserved = property(doc, worker, "ReservedConcurrentExecutions").ok_or_else(|| {
        format!("{id} has no ReservedConcurrentExecutions (it must be !Ref GlobalConcurrency)")
    })?;
    expect_ref(
        reserved,
        "GlobalConcurrency",
        &format!("{id}.ReservedConcurrentExecutions"),
    )?;
    let maximum = event
        .get("ScalingConfig")
        .and_then(|s| s.get("MaximumConcurrency"))
        .ok_or_else(|| {
            format!(
                "{id}'s SQS event has no ScalingConfig.MaximumConcurrency: the event source mapping \
                 ignores reserved concurrency and over-pulls, so it must be !Ref GlobalConcurrency too"
            )
        })?;
    expect_ref(
        maximum,
        "GlobalConcurrency",
        &format!("{id}'s SQS event ScalingConfig.MaximumConcurrency"),
    )?;
    let env = env_var(doc, worker, "GLOBAL_CONCURRENCY")
        .ok_or_else(|| format!("{id} has no GLOBAL_CONCURRENCY environment variable"))?;
    expect_ref(
        env,
        "GlobalConcurrency",
        &format!("{id} env GLOBAL_CONCURRENCY"),
    )?;

    let parameter = parameter(doc, "GlobalConcurrency")?;
    let min = parameter.get("MinValue").and_then(literal_u64);
    let max = parameter.get("MaxValue").and_then(literal_u64);
    if !matches!(min, Some(m) if m >= 2) || !matches!(max, Some(m) if m <= 1000) {
        return Err(format!(
            "parameter GlobalConcurrency must have MinValue >= 2 and MaxValue <= 1000 (the range of \
             ScalingConfig.MaximumConcurrency), has MinValue {min:?}, MaxValue {max:?}"
        ));
    }
    Ok(())
}

// (b) VisibilityTimeout >= 6 x the worker's Timeout (AWS guidance for SQS event sources).
fn check_visibility_timeout(doc: &Value) -> Check {
    let (id, worker, event) = worker(doc)?;
    let (queue_id, queue) = event_queue(doc, id, event)?;
    // Lambda's default timeout is 3 s, SQS's default visibility timeout 30 s.
    let timeout = match property(doc, worker, "Timeout") {
        None => 3,
        Some(v) => literal_u64(v).ok_or_else(|| {
            format!(
                "{id}.Timeout must be a literal number to be checked, is {}",
                show(v)
            )
        })?,
    };
    let visibility = match queue
        .get("Properties")
        .and_then(|p| p.get("VisibilityTimeout"))
    {
        None => 30,
        Some(v) => literal_u64(v).ok_or_else(|| {
            format!(
                "{queue_id}.VisibilityTimeout must be a literal number to be checked, is {}",
                show(v)
            )
        })?,
    };
    if visibility < 6 * timeout {
        return Err(format!(
            "{queue_id}.VisibilityTimeout is {visibility} s but must be at least 6 x {id}'s Timeout \
             ({timeout} s) = {} s, or messages reappear while an invocation still holds them",
            6 * timeout
        ));
    }
    Ok(())
}

// (c) rust-cargolambda metadata naming a [[bin]] of a functions/* crate, built where cargo
// can find it.
fn check_build_metadata(doc: &Value, root: &Path) -> Check {
    let bins = cargo_bins(&root.join("functions"))?;
    let mut deployed = BTreeSet::new();
    for (id, function) in functions(doc) {
        let metadata = function
            .get("Metadata")
            .ok_or_else(|| format!("{id} has no Metadata (BuildMethod: rust-cargolambda)"))?;
        let method = metadata.get("BuildMethod").and_then(plain_str);
        if method != Some("rust-cargolambda") {
            return Err(format!(
                "{id}.Metadata.BuildMethod must be rust-cargolambda, is {method:?}"
            ));
        }
        let binary = metadata
            .get("BuildProperties")
            .and_then(|p| p.get("Binary"))
            .and_then(plain_str)
            .ok_or_else(|| {
                format!("{id}.Metadata.BuildProperties.Binary must name the cargo binary")
            })?;
        let crate_dir = bins.get(binary).ok_or_else(|| {
            format!(
                "{id} builds binary {binary:?}, which no [[bin]] in functions/*/Cargo.toml declares \
                 (declared: {:?})",
                bins.keys().collect::<Vec<_>>()
            )
        })?;
        if !deployed.insert(binary.to_owned()) {
            return Err(format!(
                "binary {binary:?} is deployed by more than one function ({id} is a second)"
            ));
        }

        let code_uri = property(doc, function, "CodeUri")
            .and_then(plain_str)
            .ok_or_else(|| format!("{id} has no literal CodeUri"))?;
        let code_dir = root.join(code_uri);
        if !code_dir.join("Cargo.toml").is_file() {
            return Err(format!(
                "{id}.CodeUri {code_uri:?} is not a directory with a Cargo.toml ({} does not exist)",
                code_dir.join("Cargo.toml").display()
            ));
        }
        let code_dir = canonical(&code_dir)?;
        if code_dir == canonical(root)? {
            // `cargo lambda build --bin X` at the workspace root only searches the default
            // members, which is the root package alone unless `default-members` lists more.
            let members = default_members(root)?;
            let member = crate_dir.strip_prefix(root).unwrap_or(crate_dir);
            if !members.iter().any(|m| Path::new(m) == member) {
                return Err(format!(
                    "{id}.CodeUri is the workspace root, where `cargo lambda build --bin {binary}` fails \
                     (\"no bin target named `{binary}` in default-run packages\") unless the root \
                     Cargo.toml's workspace.default-members lists {}; point CodeUri at {} instead",
                    member.display(),
                    member.display()
                ));
            }
        } else if code_dir != canonical(crate_dir)? {
            return Err(format!(
                "{id}.CodeUri {code_uri:?} does not hold binary {binary:?}, which {} declares: \
                 `cargo lambda build --bin {binary}` runs in CodeUri",
                crate_dir.join("Cargo.toml").display()
            ));
        }

        for (name, expected) in [("Runtime", "provided.al2023"), ("Handler", "bootstrap")] {
            let actual = property(doc, function, name).and_then(plain_str);
            if actual != Some(expected) {
                return Err(format!(
                    "{id}.{name} must be {expected} (directly or in Globals), is {actual:?}"
                ));
            }
        }
        let arm64 = property(doc, function, "Architectures")
            .and_then(Value::as_sequence)
            .is_some_and(|a| a.len() == 1 && plain_str(&a[0]) == Some("arm64"));
        if !arm64 {
            return Err(format!(
                "{id}.Architectures must be [arm64] (directly or in Globals)"
            ));
        }
    }
    let undeployed: Vec<_> = bins.keys().filter(|b| !deployed.contains(*b)).collect();
    if !undeployed.is_empty() {
        return Err(format!(
            "binaries {undeployed:?} of functions/* are deployed by no function"
        ));
    }
    Ok(())
}

// (d) WEBHOOK_URL = the webhook function's URL + the webhook path the code serves.
fn check_webhook_url(doc: &Value) -> Check {
    let (id, worker, _) = worker(doc)?;
    let with_url: Vec<_> = functions(doc)
        .filter(|(_, f)| property(doc, f, "FunctionUrlConfig").is_some())
        .collect();
    let [(webhook_id, webhook)] = with_url[..] else {
        return Err(format!(
            "exactly one function (the webhook) must have a FunctionUrlConfig, found {:?}",
            with_url.iter().map(|(id, _)| id).collect::<Vec<_>>()
        ));
    };
    let auth = property(doc, webhook, "FunctionUrlConfig")
        .and_then(|c| c.get("AuthType"))
        .and_then(plain_str);
    if auth != Some("NONE") {
        return Err(format!(
            "{webhook_id}.FunctionUrlConfig.AuthType must be NONE (the provider cannot sign AWS \
             requests; the function verifies webhook signatures), is {auth:?}"
        ));
    }
    // SAM names the URL resource <Function>Url; its FunctionUrl ends with '/'.
    let expected = format!(
        "${{{webhook_id}Url.FunctionUrl}}{}",
        WEBHOOK_PATH.trim_start_matches('/')
    );
    let value =
        env_var(doc, worker, "WEBHOOK_URL").ok_or_else(|| format!("{id} has no WEBHOOK_URL"))?;
    if sub_text(value) != Some(expected.as_str()) {
        return Err(format!(
            "{id} env WEBHOOK_URL must be !Sub \"{expected}\", is {}",
            show(value)
        ));
    }
    if let Some(output) = doc
        .get("Outputs")
        .and_then(|o| o.get("WebhookUrl"))
        .and_then(|o| o.get("Value"))
    {
        if sub_text(output) != Some(expected.as_str()) {
            return Err(format!(
                "Outputs.WebhookUrl must be !Sub \"{expected}\", is {}",
                show(output)
            ));
        }
    }
    Ok(())
}

// (e) MAX_RECEIVE_COUNT and the redrive policy's maxReceiveCount from the same parameter.
fn check_max_receive_count(doc: &Value) -> Check {
    let (id, worker, event) = worker(doc)?;
    let (queue_id, queue) = event_queue(doc, id, event)?;
    let redrive = queue
        .get("Properties")
        .and_then(|p| p.get("RedrivePolicy"))
        .ok_or_else(|| format!("{queue_id} has no RedrivePolicy (a DLQ for poison messages)"))?;
    let dlq = redrive.get("deadLetterTargetArn").and_then(get_att);
    if !matches!(&dlq, Some((dlq_id, attr)) if attr == "Arn" && resource_type(doc, dlq_id) == Some("AWS::SQS::Queue"))
    {
        return Err(format!(
            "{queue_id}.RedrivePolicy.deadLetterTargetArn must be !GetAtt <queue>.Arn of a queue in the template"
        ));
    }
    let count = redrive
        .get("maxReceiveCount")
        .ok_or_else(|| format!("{queue_id}.RedrivePolicy has no maxReceiveCount"))?;
    let parameter = as_ref(count).ok_or_else(|| {
        format!(
            "{queue_id}.RedrivePolicy.maxReceiveCount must be !Ref <parameter> (shared with \
             MAX_RECEIVE_COUNT), is {}",
            show(count)
        )
    })?;
    if env_var(doc, worker, "MAX_RECEIVE_COUNT").is_none() {
        return Err(format!(
            "{id} has no MAX_RECEIVE_COUNT environment variable (!Ref {parameter})"
        ));
    }
    for (fid, function) in functions(doc) {
        if let Some(value) = env_var(doc, function, "MAX_RECEIVE_COUNT") {
            expect_ref(
                value,
                parameter,
                &format!("{fid} env MAX_RECEIVE_COUNT (like the redrive maxReceiveCount)"),
            )?;
        }
    }
    Ok(())
}

// (f) DATABASE_URL and WEBHOOK_SECRET (and API_TOKEN, if set) are dynamic references.
/// Every secret a function reads, each from a dynamic reference.
const SECRETS: [&str; 9] = [
    "DATABASE_URL",
    "WEBHOOK_SECRET",
    "CALLBACK_SECRET",
    "RETELL_API_KEY",
    "VAPI_API_KEY",
    "VAPI_WEBHOOK_SECRET",
    "TWILIO_AUTH_TOKEN",
    "ELEVENLABS_API_KEY",
    "ELEVENLABS_WEBHOOK_SECRET",
];

fn check_secrets(doc: &Value) -> Check {
    for (id, function) in functions(doc) {
        for name in SECRETS {
            let value =
                env_var(doc, function, name).ok_or_else(|| format!("{id} has no {name}"))?;
            dynamic_reference(value).map_err(|e| format!("{id} env {name}: {e}"))?;
        }
        if let Some(value) = env_var(doc, function, "API_TOKEN") {
            dynamic_reference(value).map_err(|e| format!("{id} env API_TOKEN: {e}"))?;
        }
    }
    Ok(())
}

// The Provider parameter lists exactly the providers of `PROVIDER` (shared::provider), and
// every function reads PROVIDER from it.
fn check_provider(doc: &Value) -> Check {
    let allowed: Vec<&str> = doc["Parameters"]["Provider"]["AllowedValues"]
        .as_sequence()
        .ok_or("the Provider parameter has no AllowedValues")?
        .iter()
        .filter_map(plain_str)
        .collect();
    let known: Vec<&str> = ebra_shared::provider::ProviderKind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .collect();
    if allowed != known {
        return Err(format!(
            "Provider allows {allowed:?}, Ebra speaks {known:?}"
        ));
    }
    for (id, function) in functions(doc) {
        let value =
            env_var(doc, function, "PROVIDER").ok_or_else(|| format!("{id} has no PROVIDER"))?;
        if as_ref(value) != Some("Provider") {
            return Err(format!(
                "{id} env PROVIDER is {}, not !Ref Provider",
                show(value)
            ));
        }
    }
    Ok(())
}

/// A `{{resolve:secretsmanager:...}}` or `{{resolve:ssm:...}}` string, plain or in `!Sub`, or
/// an `!If` whose branches are such references or `!Ref AWS::NoValue`.
fn dynamic_reference(value: &Value) -> Check {
    if let Some(Value::Sequence(args)) = intrinsic(value, "If") {
        for branch in args.iter().skip(1) {
            if as_ref(branch) != Some("AWS::NoValue") {
                dynamic_reference(branch)?;
            }
        }
        return Ok(());
    }
    let text = plain_str(value)
        .or_else(|| sub_text(value))
        .ok_or_else(|| {
            format!(
                "must be a Secrets Manager or SSM dynamic reference ({{{{resolve:...}}}}), not {}",
                show(value)
            )
        })?;
    let ok = (text.starts_with("{{resolve:secretsmanager:") || text.starts_with("{{resolve:ssm:"))
        && text.ends_with("}}")
        && !text[2..].contains("{{");
    if !ok {
        return Err(format!(
            "must be exactly one {{{{resolve:secretsmanager:...}}}} or {{{{resolve:ssm:...}}}} reference \
             (ssm-secure is not supported in Lambda environments), is {text:?}"
        ));
    }
    Ok(())
}

// Every required route is an HttpApi event, and is authenticated unless it is public.
fn check_api_routes(doc: &Value) -> Check {
    let mut events = BTreeMap::new();
    for (id, function) in functions(doc) {
        for (name, event) in events_of(function) {
            if event.get("Type").and_then(plain_str) != Some("HttpApi") {
                continue;
            }
            let props = event
                .get("Properties")
                .ok_or_else(|| format!("{id} event {name} has no Properties"))?;
            let method = props
                .get("Method")
                .and_then(plain_str)
                .unwrap_or_default()
                .to_uppercase();
            let path = props
                .get("Path")
                .and_then(plain_str)
                .unwrap_or_default()
                .to_owned();
            let api = props.get("ApiId").and_then(as_ref).map(str::to_owned);
            events.insert((method, path), (format!("{id}.Events.{name}"), api, props));
        }
    }
    let wanted: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let have: BTreeSet<(String, String)> = events.keys().cloned().collect();
    if have != wanted {
        return Err(format!(
            "HttpApi events must be exactly {wanted:?}; missing {:?}, unexpected {:?}",
            wanted.difference(&have).collect::<Vec<_>>(),
            have.difference(&wanted).collect::<Vec<_>>()
        ));
    }

    for ((method, path), (event, api, props)) in &events {
        let public = PUBLIC_ROUTES.contains(&(method.as_str(), path.as_str()));
        let api = api.as_deref().ok_or_else(|| {
            format!("{event} must name its API (ApiId: !Ref <AWS::Serverless::HttpApi>)")
        })?;
        if resource_type(doc, api) != Some("AWS::Serverless::HttpApi") {
            return Err(format!(
                "{event}.ApiId must be an AWS::Serverless::HttpApi, is {api}"
            ));
        }
        let api_props = &doc["Resources"][api]["Properties"];
        let authenticated = match api_props.get("DefinitionBody") {
            // Security declared in the OpenAPI body: an operation's requirements name schemes.
            Some(body) => {
                let operation = body
                    .get("paths")
                    .and_then(|p| p.get(path.as_str()))
                    .and_then(|p| p.get(method.to_lowercase().as_str()));
                let requirements = operation
                    .and_then(|o| o.get("security"))
                    .and_then(Value::as_sequence);
                let schemes = body
                    .get("components")
                    .and_then(|c| c.get("securitySchemes"));
                match requirements {
                    Some(reqs) if !reqs.is_empty() => {
                        for req in reqs {
                            for (scheme, _) in req.as_mapping().into_iter().flatten() {
                                let scheme = plain_str(scheme).unwrap_or_default();
                                if schemes.and_then(|s| s.get(scheme)).is_none() {
                                    return Err(format!(
                                        "{api} DefinitionBody: {method} {path} requires security scheme \
                                         {scheme:?}, which components.securitySchemes does not define"
                                    ));
                                }
                            }
                        }
                        true
                    }
                    _ => false,
                }
            }
            // Security through SAM's Auth: a default authorizer, unless the event opts out.
            None => {
                let default = api_props
                    .get("Auth")
                    .and_then(|a| a.get("DefaultAuthorizer"))
                    .is_some();
                let opted_out = props
                    .get("Auth")
                    .and_then(|a| a.get("Authorizer"))
                    .and_then(plain_str)
                    == Some("NONE");
                default && !opted_out
            }
        };
        if public && authenticated {
            return Err(format!(
                "{method} {path} ({event}) must be public, but requires authentication"
            ));
        }
        if !public && !authenticated {
            return Err(format!(
                "{method} {path} ({event}) is not authenticated by API Gateway"
            ));
        }
    }

    // Every operation in an OpenAPI body needs an event, which gives it its integration.
    for (id, resource) in resources(doc) {
        if resource.get("Type").and_then(plain_str) != Some("AWS::Serverless::HttpApi") {
            continue;
        }
        let paths = resource
            .get("Properties")
            .and_then(|p| p.get("DefinitionBody"))
            .and_then(|b| b.get("paths"));
        for (path, item) in paths.and_then(Value::as_mapping).into_iter().flatten() {
            for (method, _) in item.as_mapping().into_iter().flatten() {
                let key = (
                    plain_str(method).unwrap_or_default().to_uppercase(),
                    plain_str(path).unwrap_or_default().to_owned(),
                );
                if !events.contains_key(&key) {
                    return Err(format!(
                        "{id} DefinitionBody has {} {} but no function event integrates it",
                        key.0, key.1
                    ));
                }
            }
        }
    }

    let default = parameter(doc, "ApiAuth")?
        .get("Default")
        .and_then(plain_str);
    if default != Some("IAM") {
        return Err(format!(
            "parameter ApiAuth must default to IAM (authentication on by default), is {default:?}"
        ));
    }
    Ok(())
}

// The reclaimer's "reclaimer pass" log lines feed CallsInProgress, and the at-cap alarm reads it.
fn check_in_progress_metric(doc: &Value) -> Check {
    let reclaimer: Vec<_> = functions(doc)
        .filter(|(_, f)| {
            events_of(f).any(|(_, e)| {
                matches!(
                    e.get("Type").and_then(plain_str),
                    Some("Schedule" | "ScheduleV2")
                )
            })
        })
        .map(|(id, _)| id)
        .collect();
    let [reclaimer] = reclaimer[..] else {
        return Err(format!(
            "exactly one function (the reclaimer) must have a Schedule event, found {reclaimer:?}"
        ));
    };
    let filters: Vec<_> = resources(doc)
        .filter(|(_, r)| r.get("Type").and_then(plain_str) == Some("AWS::Logs::MetricFilter"))
        .filter(|(_, r)| {
            plain_str(&r["Properties"]["FilterPattern"])
                .is_some_and(|p| p.contains("\"reclaimer pass\""))
        })
        .collect();
    let [(filter_id, filter)] = filters[..] else {
        return Err(format!(
            "exactly one AWS::Logs::MetricFilter must match '{{ $.message = \"reclaimer pass\" }}', found {}",
            filters.len()
        ));
    };
    let props = &filter["Properties"];
    let group = as_ref(&props["LogGroupName"]).ok_or_else(|| {
        format!("{filter_id}.LogGroupName must be !Ref the reclaimer's AWS::Logs::LogGroup")
    })?;
    let group_name = doc["Resources"][group]["Properties"]
        .get("LogGroupName")
        .and_then(sub_text);
    let expected = format!("/aws/lambda/${{{reclaimer}}}");
    if group_name != Some(expected.as_str()) {
        return Err(format!(
            "{filter_id} reads log group {group}, whose LogGroupName must be !Sub {expected}, is {group_name:?}"
        ));
    }
    let transform = props["MetricTransformations"]
        .as_sequence()
        .and_then(|t| t.first())
        .ok_or_else(|| format!("{filter_id} has no MetricTransformations"))?;
    if transform.get("MetricValue").and_then(plain_str) != Some("$.in_progress") {
        return Err(format!(
            "{filter_id} must extract MetricValue $.in_progress"
        ));
    }
    let (name, namespace) = (&transform["MetricName"], &transform["MetricNamespace"]);

    let alarm = resources(doc).find(|(_, r)| {
        r.get("Type").and_then(plain_str) == Some("AWS::CloudWatch::Alarm")
            && r["Properties"].get("MetricName") == Some(name)
            && r["Properties"].get("Namespace") == Some(namespace)
    });
    let Some((alarm_id, alarm)) = alarm else {
        return Err(format!(
            "no alarm reads {filter_id}'s metric {} in {}",
            show(name),
            show(namespace)
        ));
    };
    let props = &alarm["Properties"];
    expect_ref(
        &props["Threshold"],
        "GlobalConcurrency",
        &format!("{alarm_id}.Threshold"),
    )?;
    if props.get("ComparisonOperator").and_then(plain_str) != Some("GreaterThanOrEqualToThreshold")
    {
        return Err(format!(
            "{alarm_id}.ComparisonOperator must be GreaterThanOrEqualToThreshold"
        ));
    }
    let period = props.get("Period").and_then(literal_u64).unwrap_or(0);
    let datapoints = props
        .get("DatapointsToAlarm")
        .or_else(|| props.get("EvaluationPeriods"))
        .and_then(literal_u64)
        .unwrap_or(0);
    if period * datapoints < 15 * 60 {
        return Err(format!(
            "{alarm_id} must fire only after 15 minutes at the cap, fires after {period} s x {datapoints}"
        ));
    }
    Ok(())
}

// The notifier (issue 17): its own queue with a DLQ and a visibility of six timeouts, read by
// EVENTS_QUEUE_URL, which every other function can send to (they nudge it after writing
// events); alarms on its errors, its DLQ and the "webhook endpoint disabled" log line; and
// ALLOW_PRIVATE_WEBHOOK_URLS set nowhere.
fn check_notifier(doc: &Value) -> Check {
    let (id, notifier, event) = sqs_consumer(doc, "notifier")?;
    let (queue_id, queue) = event_queue(doc, id, event)?;
    let (_, _, worker_event) = worker(doc)?;
    let (calls_queue, _) = event_queue(doc, "the worker", worker_event)?;
    if queue_id == calls_queue {
        return Err(format!(
            "{id} must have a queue of its own, not {calls_queue}"
        ));
    }
    let redrive = &queue["Properties"]["RedrivePolicy"];
    if !matches!(redrive.get("deadLetterTargetArn").and_then(get_att),
        Some((dlq, attr)) if attr == "Arn" && resource_type(doc, &dlq) == Some("AWS::SQS::Queue") && dlq != queue_id)
    {
        return Err(format!(
            "{queue_id} needs a RedrivePolicy to a DLQ of its own"
        ));
    }
    let timeout = property(doc, notifier, "Timeout")
        .and_then(literal_u64)
        .ok_or_else(|| format!("{id} needs a literal Timeout"))?;
    let visibility = queue["Properties"]
        .get("VisibilityTimeout")
        .and_then(literal_u64)
        .unwrap_or(30);
    if visibility < 6 * timeout {
        return Err(format!(
            "{queue_id}.VisibilityTimeout ({visibility}) must be >= 6 x {id}.Timeout ({timeout})"
        ));
    }
    let maximum = event
        .get("ScalingConfig")
        .and_then(|s| s.get("MaximumConcurrency"))
        .ok_or_else(|| format!("{id}'s SQS event needs ScalingConfig.MaximumConcurrency"))?;
    if as_ref(maximum).is_none() && literal_u64(maximum).is_none_or(|m| !(2..=1000).contains(&m)) {
        return Err(format!(
            "{id}'s MaximumConcurrency must be 2-1000 or a parameter"
        ));
    }

    // EVENTS_QUEUE_URL names it for every function, and every other function may send to it.
    for (fid, function) in functions(doc) {
        let url = env_var(doc, function, "EVENTS_QUEUE_URL")
            .ok_or_else(|| format!("{fid} has no EVENTS_QUEUE_URL"))?;
        expect_ref(url, &queue_id, &format!("{fid} env EVENTS_QUEUE_URL"))?;
        if let Some(value) = env_var(doc, function, "ALLOW_PRIVATE_WEBHOOK_URLS") {
            if plain_str(value).is_none_or(|v| !v.eq_ignore_ascii_case("false")) {
                return Err(format!(
                    "{fid} sets ALLOW_PRIVATE_WEBHOOK_URLS: events could reach the VPC and the metadata service"
                ));
            }
        }
        let role = property(doc, function, "Role")
            .and_then(get_att)
            .map(|(role, _)| role)
            .ok_or_else(|| format!("{fid}.Role must be !GetAtt <role>.Arn"))?;
        if !role_sends_to(doc, &role, &queue_id) {
            return Err(format!(
                "{fid}'s role {role} cannot sqs:SendMessage to {queue_id}: its nudges would fail"
            ));
        }
    }

    // Alarms: errors of the notifier, its DLQ, and the disabled-endpoint log line.
    let alarms: Vec<&Value> = resources(doc)
        .filter(|(_, r)| r.get("Type").and_then(plain_str) == Some("AWS::CloudWatch::Alarm"))
        .map(|(_, r)| &r["Properties"])
        .collect();
    let on_dimension = |metric: &str, value: &dyn Fn(&Value) -> bool| {
        alarms.iter().any(|a| {
            a.get("MetricName").and_then(plain_str) == Some(metric)
                && a["Dimensions"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|d| value(&d["Value"]))
        })
    };
    if !on_dimension("Errors", &|v| as_ref(v) == Some(id)) {
        return Err(format!("no alarm on {id}'s Errors"));
    }
    let dlq = redrive
        .get("deadLetterTargetArn")
        .and_then(get_att)
        .map(|(dlq, _)| dlq)
        .unwrap_or_default();
    if !on_dimension("ApproximateNumberOfMessagesVisible", &|v| {
        get_att(v).is_some_and(|(q, attr)| q == dlq && attr == "QueueName")
    }) {
        return Err(format!(
            "no alarm on {dlq} (the notifier's DLQ) holding messages"
        ));
    }
    let filter = resources(doc).find(|(_, r)| {
        r.get("Type").and_then(plain_str) == Some("AWS::Logs::MetricFilter")
            && plain_str(&r["Properties"]["FilterPattern"])
                .is_some_and(|p| p.contains("\"webhook endpoint disabled\""))
    });
    let Some((filter_id, filter)) = filter else {
        return Err("no MetricFilter counts the \"webhook endpoint disabled\" log lines".into());
    };
    let group = as_ref(&filter["Properties"]["LogGroupName"]).unwrap_or_default();
    let expected = format!("/aws/lambda/${{{id}}}");
    if doc["Resources"][group]["Properties"]
        .get("LogGroupName")
        .and_then(sub_text)
        != Some(expected.as_str())
    {
        return Err(format!(
            "{filter_id} must read {id}'s log group ({expected})"
        ));
    }
    let transform = &filter["Properties"]["MetricTransformations"][0];
    let read = alarms.iter().any(|a| {
        a.get("MetricName") == transform.get("MetricName")
            && a.get("Namespace") == transform.get("MetricNamespace")
    });
    if !read {
        return Err(format!("no alarm reads {filter_id}'s metric"));
    }
    Ok(())
}

/// Whether `role`'s inline policies allow `sqs:SendMessage` on `!GetAtt <queue>.Arn`.
fn role_sends_to(doc: &Value, role: &str, queue: &str) -> bool {
    let policies = doc["Resources"][role]["Properties"]["Policies"].as_sequence();
    policies
        .into_iter()
        .flatten()
        .flat_map(|p| {
            p["PolicyDocument"]["Statement"]
                .as_sequence()
                .into_iter()
                .flatten()
        })
        .any(|statement| {
            let actions: Vec<&str> = match &statement["Action"] {
                Value::Sequence(list) => list.iter().filter_map(plain_str).collect(),
                other => plain_str(other).into_iter().collect(),
            };
            let resources: Vec<&Value> = match &statement["Resource"] {
                Value::Sequence(list) => list.iter().collect(),
                other => vec![other],
            };
            plain_str(&statement["Effect"]) == Some("Allow")
                && actions.contains(&"sqs:SendMessage")
                && resources
                    .iter()
                    .any(|r| get_att(r).is_some_and(|(q, attr)| q == queue && attr == "Arn"))
        })
}

// ---------------------------------------------------------------------------------------------
// Template navigation
// ---------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn template() -> Value {
    let path = workspace_root().join("template.yaml");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

fn resources(doc: &Value) -> impl Iterator<Item = (&str, &Value)> {
    doc.get("Resources")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((plain_str(k)?, v)))
}

fn resource_type<'a>(doc: &'a Value, id: &str) -> Option<&'a str> {
    doc.get("Resources")?
        .get(id)?
        .get("Type")
        .and_then(plain_str)
}

fn functions(doc: &Value) -> impl Iterator<Item = (&str, &Value)> {
    resources(doc).filter(|(_, r)| r.get("Type").and_then(plain_str) == Some(SERVERLESS_FUNCTION))
}

fn parameter<'a>(doc: &'a Value, name: &str) -> Result<&'a Value, String> {
    doc.get("Parameters")
        .and_then(|p| p.get(name))
        .ok_or_else(|| format!("parameter {name} is missing"))
}

/// A function property, or else the one in `Globals.Function` (as SAM merges them).
fn property<'a>(doc: &'a Value, function: &'a Value, name: &str) -> Option<&'a Value> {
    function
        .get("Properties")
        .and_then(|p| p.get(name))
        .or_else(|| doc.get("Globals")?.get("Function")?.get(name))
}

/// An environment variable of a function, falling back to `Globals.Function`.
fn env_var<'a>(doc: &'a Value, function: &'a Value, name: &str) -> Option<&'a Value> {
    let vars = |v: &'a Value| v.get("Environment")?.get("Variables")?.get(name);
    function
        .get("Properties")
        .and_then(vars)
        .or_else(|| vars(doc.get("Globals")?.get("Function")?))
}

fn events_of(function: &Value) -> impl Iterator<Item = (&str, &Value)> {
    function
        .get("Properties")
        .and_then(|p| p.get("Events"))
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((plain_str(k)?, v)))
}

/// The worker: the one function with an SQS event, and that event's properties.
fn worker(doc: &Value) -> Result<(&str, &Value, &Value), String> {
    sqs_consumer(doc, "worker")
}

/// The function building `binary`, with its one SQS event.
fn sqs_consumer<'a>(
    doc: &'a Value,
    binary: &str,
) -> Result<(&'a str, &'a Value, &'a Value), String> {
    let found: Vec<_> = functions(doc)
        .filter(|(_, f)| {
            f.get("Metadata")
                .and_then(|m| m.get("BuildProperties"))
                .and_then(|p| p.get("Binary"))
                .and_then(plain_str)
                == Some(binary)
        })
        .flat_map(|(id, f)| {
            events_of(f)
                .filter(|(_, e)| e.get("Type").and_then(plain_str) == Some("SQS"))
                .filter_map(move |(_, e)| Some((id, f, e.get("Properties")?)))
        })
        .collect();
    match found[..] {
        [one] => Ok(one),
        _ => Err(format!(
            "exactly one function (the {binary}) must have one SQS event, found {:?}",
            found.iter().map(|(id, _, _)| id).collect::<Vec<_>>()
        )),
    }
}

/// The queue of an SQS event: `Queue: !GetAtt <Queue>.Arn`.
fn event_queue<'a>(
    doc: &'a Value,
    id: &str,
    event: &'a Value,
) -> Result<(String, &'a Value), String> {
    let queue = event
        .get("Queue")
        .ok_or_else(|| format!("{id}'s SQS event has no Queue"))?;
    match get_att(queue) {
        Some((queue_id, attr)) if attr == "Arn" && resource_type(doc, &queue_id) == Some("AWS::SQS::Queue") => {
            let resource = &doc["Resources"][queue_id.as_str()];
            Ok((queue_id, resource))
        }
        _ => Err(format!(
            "{id}'s SQS event Queue must be !GetAtt <queue>.Arn of an AWS::SQS::Queue in the template, is {}",
            show(queue)
        )),
    }
}

fn cargo_bins(functions_dir: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut bins = BTreeMap::new();
    let entries = fs::read_dir(functions_dir)
        .map_err(|e| format!("cannot list {}: {e}", functions_dir.display()))?;
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = fs::read_to_string(&manifest) else {
            continue;
        };
        for name in bin_names(&text) {
            if let Some(previous) = bins.insert(name.clone(), entry.path()) {
                return Err(format!(
                    "binary {name:?} is declared in {} and {}",
                    previous.display(),
                    entry.path().display()
                ));
            }
        }
    }
    Ok(bins)
}

/// The `name`s of the `[[bin]]` tables of a Cargo.toml.
fn bin_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line.starts_with("[[bin]]");
        } else if in_bin {
            if let Some(value) = line
                .strip_prefix("name")
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('='))
            {
                names.push(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    names
}

/// The `workspace.default-members` of the root Cargo.toml (empty when absent).
fn default_members(root: &Path) -> Result<Vec<String>, String> {
    let manifest = root.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let Some(start) = text.find("default-members") else {
        return Ok(Vec::new());
    };
    let list = &text[start..];
    let list = &list[..list.find(']').unwrap_or(list.len())];
    Ok(list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(|m| m.trim_start_matches("./").to_owned())
        .collect())
}

fn canonical(path: &Path) -> Result<PathBuf, String> {
    path.canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Intrinsic functions, short (`!Ref X`) or long (`{Ref: X}`, `{Fn::Sub: ...}`)
// ---------------------------------------------------------------------------------------------

fn intrinsic<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    match value {
        Value::Tagged(tagged) if tagged.tag == name => Some(&tagged.value),
        Value::Mapping(map) if map.len() == 1 => {
            let long = if name == "Ref" {
                name.to_owned()
            } else {
                format!("Fn::{name}")
            };
            map.get(long.as_str())
        }
        _ => None,
    }
}

/// A string that is not an intrinsic (`Value::as_str` would see through `!Ref X`).
fn plain_str(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn literal_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_ref(value: &Value) -> Option<&str> {
    intrinsic(value, "Ref").and_then(plain_str)
}

/// The template string of `!Sub "..."` or `!Sub ["...", {vars}]`.
fn sub_text(value: &Value) -> Option<&str> {
    match intrinsic(value, "Sub")? {
        Value::String(s) => Some(s),
        Value::Sequence(args) => args.first().and_then(plain_str),
        _ => None,
    }
}

/// `!GetAtt A.B` or `!GetAtt [A, B]` as (A, B).
fn get_att(value: &Value) -> Option<(String, String)> {
    match intrinsic(value, "GetAtt")? {
        Value::String(s) => s.split_once('.').map(|(a, b)| (a.to_owned(), b.to_owned())),
        Value::Sequence(args) if args.len() == 2 => Some((
            plain_str(&args[0])?.to_owned(),
            plain_str(&args[1])?.to_owned(),
        )),
        _ => None,
    }
}

fn expect_ref(value: &Value, parameter: &str, what: &str) -> Check {
    match as_ref(value) {
        Some(name) if name == parameter => Ok(()),
        _ => Err(format!(
            "{what} must be !Ref {parameter}, is {}",
            show(value)
        )),
    }
}

fn show(value: &Value) -> String {
    yaml_serde::to_string(value)
        .map_or_else(|_| format!("{value:?}"), |s| s.trim().replace('\n', " "))
}

// ---------------------------------------------------------------------------------------------
// Each check catches a broken template
// ---------------------------------------------------------------------------------------------

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).expect("test YAML parses")
}

/// Applies `breakage` to a copy of template.yaml and asserts that `check` now fails.
fn assert_caught(check: impl Fn(&Value) -> Check, breakage: impl FnOnce(&mut Value)) {
    let mut doc = template();
    check(&doc).expect("the check passes on template.yaml before the breakage");
    breakage(&mut doc);
    let error = check(&doc).expect_err("the check must fail on the broken template");
    assert!(!error.is_empty());
}

fn worker_props(doc: &mut Value) -> &mut Value {
    &mut doc["Resources"]["WorkerFunction"]["Properties"]
}

fn globals_env(doc: &mut Value) -> &mut Value {
    &mut doc["Globals"]["Function"]["Environment"]["Variables"]
}

#[test]
fn literal_reserved_concurrency_is_caught() {
    assert_caught(check_worker_concurrency, |doc| {
        worker_props(doc)["ReservedConcurrentExecutions"] = Value::from(30);
    });
}

#[test]
fn maximum_concurrency_from_another_parameter_is_caught() {
    assert_caught(check_worker_concurrency, |doc| {
        worker_props(doc)["Events"]["CallsQueue"]["Properties"]["ScalingConfig"]
            ["MaximumConcurrency"] = yaml("!Ref BatchSize");
    });
}

#[test]
fn short_visibility_timeout_is_caught() {
    assert_caught(check_visibility_timeout, |doc| {
        doc["Resources"]["CallsQueue"]["Properties"]["VisibilityTimeout"] = Value::from(179);
    });
    assert_caught(check_visibility_timeout, |doc| {
        worker_props(doc)["Timeout"] = Value::from(31);
    });
}

#[test]
fn visibility_timeout_checks_the_globals_timeout() {
    assert_caught(check_visibility_timeout, |doc| {
        worker_props(doc)
            .as_mapping_mut()
            .unwrap()
            .remove("Timeout");
        doc["Globals"]["Function"]["Timeout"] = Value::from(60);
    });
}

#[test]
fn unknown_binary_is_caught() {
    let root = workspace_root();
    assert_caught(
        |doc| check_build_metadata(doc, &root),
        |doc| {
            doc["Resources"]["ApiFunction"]["Metadata"]["BuildProperties"]["Binary"] =
                Value::from("nope")
        },
    );
}

#[test]
fn code_uri_without_the_binary_is_caught() {
    let root = workspace_root();
    assert_caught(
        |doc| check_build_metadata(doc, &root),
        |doc| {
            doc["Resources"]["ApiFunction"]["Properties"]["CodeUri"] =
                Value::from("functions/worker")
        },
    );
    assert_caught(
        |doc| check_build_metadata(doc, &root),
        |doc| doc["Resources"]["ApiFunction"]["Properties"]["CodeUri"] = Value::from("functions"),
    );
    assert_caught(
        |doc| check_build_metadata(doc, &root),
        |doc| doc["Resources"]["ApiFunction"]["Metadata"]["BuildMethod"] = Value::from("go1.x"),
    );
}

#[test]
fn bin_names_reads_bin_tables_only() {
    let manifest =
        "[package]\nname = \"ebra-api\"\n\n[[bin]]\nname = \"api\"\npath = \"src/main.rs\"\n\n\
                    [dependencies]\nname = \"not-a-bin\"\n";
    assert_eq!(bin_names(manifest), ["api"]);
}

#[test]
fn wrong_webhook_url_is_caught() {
    assert_caught(check_webhook_url, |doc| {
        worker_props(doc)["Environment"]["Variables"]["WEBHOOK_URL"] =
            yaml("!Sub \"${WebhookFunctionUrl.FunctionUrl}callbacks\"");
    });
    assert_caught(check_webhook_url, |doc| {
        doc["Resources"]["WebhookFunction"]["Properties"]["FunctionUrlConfig"]["AuthType"] =
            Value::from("AWS_IAM");
    });
}

#[test]
fn max_receive_count_drift_is_caught() {
    assert_caught(check_max_receive_count, |doc| {
        doc["Resources"]["CallsQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] =
            Value::from(5);
    });
    assert_caught(check_max_receive_count, |doc| {
        globals_env(doc)["MAX_RECEIVE_COUNT"] = yaml("!Ref BatchSize");
    });
}

#[test]
fn plain_secrets_are_caught() {
    assert_caught(check_secrets, |doc| {
        globals_env(doc)["DATABASE_URL"] = yaml("!Ref DatabaseUrlSecretId");
    });
    assert_caught(check_secrets, |doc| {
        globals_env(doc)["WEBHOOK_SECRET"] = Value::from("whsec_c2VjcmV0");
    });
    assert_caught(check_secrets, |doc| {
        globals_env(doc)["WEBHOOK_SECRET"] =
            yaml("!Sub \"{{resolve:ssm-secure:${WebhookSecretId}}}\"");
    });
    assert_caught(check_secrets, |doc| {
        globals_env(doc)["RETELL_API_KEY"] = yaml("!Ref ProviderSecretId");
    });
    assert_caught(check_secrets, |doc| {
        globals_env(doc)["TWILIO_AUTH_TOKEN"] =
            yaml("!If [IsTwilio, 'a-plain-token', !Ref AWS::NoValue]");
    });
}

#[test]
fn provider_drift_is_caught() {
    assert_caught(check_provider, |doc| {
        doc["Parameters"]["Provider"]["AllowedValues"]
            .as_sequence_mut()
            .unwrap()
            .pop();
    });
    assert_caught(check_provider, |doc| {
        globals_env(doc)["PROVIDER"] = Value::from("retell");
    });
}

#[test]
fn unauthenticated_or_missing_routes_are_caught() {
    assert_caught(check_api_routes, |doc| {
        doc["Resources"]["HttpApi"]["Properties"]["DefinitionBody"]["paths"]["/metrics"]["get"]
            .as_mapping_mut()
            .unwrap()
            .remove("security");
    });
    assert_caught(check_api_routes, |doc| {
        doc["Resources"]["ApiFunction"]["Properties"]["Events"]
            .as_mapping_mut()
            .unwrap()
            .remove("CancelCall");
    });
    assert_caught(check_api_routes, |doc| {
        doc["Resources"]["HttpApi"]["Properties"]["DefinitionBody"]["paths"]["/openapi.json"]
            ["get"]["security"] = yaml("[{ApiAuth: []}]");
    });
}

#[test]
fn at_cap_alarm_drift_is_caught() {
    assert_caught(check_in_progress_metric, |doc| {
        doc["Resources"]["CallsAtCapAlarm"]["Properties"]["Threshold"] = Value::from(30);
    });
    assert_caught(check_in_progress_metric, |doc| {
        doc["Resources"]["CallsAtCapAlarm"]["Properties"]["EvaluationPeriods"] = Value::from(5);
        doc["Resources"]["CallsAtCapAlarm"]["Properties"]["DatapointsToAlarm"] = Value::from(5);
    });
    assert_caught(check_in_progress_metric, |doc| {
        doc["Resources"]["ReclaimerLogGroup"]["Properties"]["LogGroupName"] =
            yaml("!Sub /aws/lambda/${WorkerFunction}");
    });
}

#[test]
fn notifier_drift_is_caught() {
    // Sharing the calls queue.
    assert_caught(check_notifier, |doc| {
        doc["Resources"]["NotifierFunction"]["Properties"]["Events"]["EventsQueue"]["Properties"]
            ["Queue"] = yaml("!GetAtt CallsQueue.Arn");
    });
    // No DLQ.
    assert_caught(check_notifier, |doc| {
        doc["Resources"]["EventsQueue"]["Properties"]
            .as_mapping_mut()
            .unwrap()
            .remove("RedrivePolicy");
    });
    // A visibility shorter than six timeouts.
    assert_caught(check_notifier, |doc| {
        doc["Resources"]["EventsQueue"]["Properties"]["VisibilityTimeout"] = Value::from(300);
    });
    // Private destinations allowed in AWS.
    assert_caught(check_notifier, |doc| {
        globals_env(doc)["ALLOW_PRIVATE_WEBHOOK_URLS"] = Value::from("true");
    });
    // The API cannot nudge it.
    assert_caught(check_notifier, |doc| {
        doc["Resources"]["SenderRole"]["Properties"]["Policies"]
            .as_sequence_mut()
            .unwrap()
            .retain(|p| plain_str(&p["PolicyName"]) != Some("events-queue-send"));
    });
    // EVENTS_QUEUE_URL names another queue.
    assert_caught(check_notifier, |doc| {
        globals_env(doc)["EVENTS_QUEUE_URL"] = yaml("!Ref CallsQueue");
    });
    // No alarm on disabled endpoints.
    assert_caught(check_notifier, |doc| {
        doc["Resources"]
            .as_mapping_mut()
            .unwrap()
            .remove("EndpointDisabledAlarm");
    });
    // No alarm on its errors.
    assert_caught(check_notifier, |doc| {
        doc["Resources"]
            .as_mapping_mut()
            .unwrap()
            .remove("NotifierErrorsAlarm");
    });
}
