//! The fleet view against the real thing: Debian's promtool checks the
//! alert rules (deploy/prometheus/) and runs their tests, and a real
//! `portwatch watch --metrics --metrics-node`, scraped after real failures
//! (a process, an address not on the host, a kernel socket), must export
//! every metric, label and label value that the rules, their tests and the
//! Grafana dashboard (deploy/grafana/) name. The names come from that
//! scrape, never from a list kept by hand.
//!
//! Needs root and Debian's `prometheus` package (promtool; `cargo xtask
//! test` installs it); fails loudly without them.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::*;
use promql_parser::{
    label::{MatchOp, Matcher},
    parser::{self, Expr, VectorSelector},
};
use saphyr::{LoadableYamlNode as _, Yaml};
use serde_json::Value;

/// The node name the tests give `--metrics-node`.
const NODE: &str = "pw-node-7";

/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .join(rel)
}

fn read(rel: &str) -> String {
    let path = repo_file(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `promtool ARGS`, killed after 60 s; panics with its output unless it
/// succeeds.
fn promtool(args: &[&str]) -> String {
    let out: Output = Command::new("timeout")
        .arg("60")
        .arg("promtool")
        .args(args)
        .output()
        .expect("coreutils' timeout");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => text,
        Some(127) => panic!(
            "promtool not found: install Debian's prometheus package (`cargo xtask setup` does)"
        ),
        Some(124) => panic!("promtool {args:?} took over 60 s"),
        _ => panic!("promtool {args:?} failed:\n{text}"),
    }
}

/// promtool accepts the rules, and every case of their tests (alerts that
/// fire and alerts that do not) passes.
#[test]
fn alert_rules_pass_promtool() {
    let rules = repo_file("deploy/prometheus/portwatch-rules.yaml");
    let out = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
    let tests = repo_file("deploy/prometheus/portwatch-rules.test.yaml");
    let out = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// One scrape: metric name -> label name -> the values seen.
type Scrape = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Reads the text exposition's samples (`name{k="v",...} value`).
fn parse_scrape(page: &str) -> Scrape {
    let mut scrape = Scrape::new();
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).expect("a sample line");
        let labels = scrape.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            for (name, value) in label_pairs(&line[end + 1..]) {
                labels.entry(name).or_default().insert(value);
            }
        }
    }
    scrape
}

/// `k="v",k2="v2"}...`: the pairs up to the closing brace, escapes undone.
fn label_pairs(s: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = s;
    while let Some((name, after)) = rest.split_once("=\"") {
        let (mut value, mut chars) = (String::new(), after.char_indices());
        let end = loop {
            match chars.next().expect("a closed label value") {
                (_, '\\') => value.push(match chars.next().expect("an escape").1 {
                    'n' => '\n',
                    c => c,
                }),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        pairs.push((name.trim_start_matches(',').to_owned(), value));
        rest = &after[end + 1..];
        if rest.starts_with('}') {
            break;
        }
    }
    pairs
}

/// What one PromQL expression names: its selectors and the labels it
/// groups or matches by.
#[derive(Default)]
struct Named {
    selectors: Vec<VectorSelector>,
    grouping: BTreeSet<String>,
}

fn walk(e: &Expr, n: &mut Named) {
    match e {
        Expr::Aggregate(a) => {
            if let Some(m) = &a.modifier {
                n.grouping.extend(m.labels().labels.iter().cloned());
            }
            walk(&a.expr, n);
            if let Some(p) = &a.param {
                walk(p, n);
            }
        }
        Expr::Binary(b) => {
            if let Some(m) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                n.grouping.extend(m.labels().labels.iter().cloned());
            }
            walk(&b.lhs, n);
            walk(&b.rhs, n);
        }
        Expr::Unary(u) => walk(&u.expr, n),
        Expr::Paren(p) => walk(&p.expr, n),
        Expr::Subquery(s) => walk(&s.expr, n),
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, n)),
        Expr::VectorSelector(v) => n.selectors.push(v.clone()),
        Expr::MatrixSelector(m) => n.selectors.push(m.vs.clone()),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Grafana's variables, as Grafana substitutes them before Prometheus
/// parses the query.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "6h")
        .replace("$node", ".*")
}

/// Checks one expression against the scrape; `labels_used` are the labels
/// its templates print (`$labels.X`, `{{X}}`). Returns what is wrong.
fn check_expr(
    what: &str,
    expr: &str,
    labels_used: &BTreeSet<String>,
    scrape: &Scrape,
    values_too: bool,
) -> Vec<String> {
    let parsed = match parser::parse(expr) {
        Ok(e) => e,
        Err(e) => return vec![format!("{what}: not PromQL ({e}): {expr}")],
    };
    let mut named = Named::default();
    walk(&parsed, &mut named);
    let mut wrong = Vec::new();
    if named.selectors.is_empty() {
        wrong.push(format!("{what}: names no metric: {expr}"));
    }
    let mut available: BTreeSet<String> = TARGET_LABELS.map(String::from).into();
    for vs in &named.selectors {
        let Some(name) = &vs.name else {
            wrong.push(format!("{what}: a selector without a metric name: {expr}"));
            continue;
        };
        let Some(labels) = scrape.get(name) else {
            wrong.push(format!("{what}: portwatch exports no {name}"));
            continue;
        };
        available.extend(labels.keys().cloned());
        for Matcher {
            op,
            name: label,
            value,
        } in &vs.matchers.matchers
        {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let Some(seen) = labels.get(label) else {
                wrong.push(format!("{what}: {name} has no label {label}"));
                continue;
            };
            let exact = matches!(op, MatchOp::Equal | MatchOp::NotEqual);
            if values_too && exact && !seen.contains(value) {
                wrong.push(format!(
                    "{what}: {name}{{{label}=\"{value}\"}}: portwatch exported only {seen:?}"
                ));
            }
        }
    }
    for label in named.grouping.iter().chain(labels_used) {
        if !available.contains(label) {
            wrong.push(format!(
                "{what}: label {label} is on none of its metrics ({available:?})"
            ));
        }
    }
    wrong
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The labels a rule's annotation prints: `$labels.X`.
fn template_labels(text: &str) -> BTreeSet<String> {
    text.split("$labels.")
        .skip(1)
        .filter_map(|t| t.split(|c| !is_name(c)).next())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The labels a Grafana legend prints: `{{X}}`.
fn legend_labels(text: &str) -> BTreeSet<String> {
    text.split("{{")
        .skip(1)
        .filter_map(|t| Some(t.split_once("}}")?.0.trim()))
        .filter(|l| !l.is_empty() && l.chars().all(is_name))
        .map(str::to_owned)
        .collect()
}

/// The YAML file `rel`'s first document.
fn yaml(rel: &str) -> Yaml<'static> {
    let mut docs = Yaml::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    docs.swap_remove(0)
}

/// Where a query is, the query, and the labels its templates print.
type Query = (String, String, BTreeSet<String>);

/// Every rule's expression, with the labels its annotations print.
fn rule_exprs() -> Vec<Query> {
    let mut exprs = Vec::new();
    for group in yaml("deploy/prometheus/portwatch-rules.yaml")["groups"]
        .as_sequence()
        .expect("groups")
    {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules");
            let mut labels = BTreeSet::new();
            for (_, text) in rule["annotations"].as_mapping().expect("annotations") {
                labels.extend(template_labels(text.as_str().expect("a string")));
            }
            let expr = rule["expr"].as_str().expect("an expr").to_owned();
            exprs.push((format!("rule {name}"), expr, labels));
        }
    }
    assert!(exprs.len() >= 5, "{exprs:?}");
    exprs
}

/// The series the rules' tests feed promtool.
fn test_series() -> Vec<String> {
    let mut series = Vec::new();
    for case in yaml("deploy/prometheus/portwatch-rules.test.yaml")["tests"]
        .as_sequence()
        .expect("tests")
    {
        for input in case["input_series"].as_sequence().expect("input_series") {
            series.push(input["series"].as_str().expect("a series").to_owned());
        }
    }
    assert!(!series.is_empty());
    series
}

/// Every query of the dashboard (rows' panels included), with the labels
/// its legend prints; and its variables' `label_values(METRIC, LABEL)`.
fn dashboard_exprs() -> (Vec<Query>, Vec<(String, String)>) {
    let dash: Value =
        serde_json::from_str(&read("deploy/grafana/portwatch-dashboard.json")).expect("JSON");
    let mut exprs = Vec::new();
    let mut panels: Vec<&Value> = dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL target");
            let legend = target["legendFormat"].as_str().unwrap_or("");
            exprs.push((
                format!("panel {:?}", panel["title"]),
                grafana_to_promql(expr),
                legend_labels(legend),
            ));
        }
    }
    let mut variables = Vec::new();
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if var["type"] != "query" {
            continue;
        }
        let query = var["definition"].as_str().expect("a query variable");
        let args = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.split_once(','))
            .unwrap_or_else(|| panic!("not label_values(METRIC, LABEL): {query}"));
        variables.push((args.0.trim().to_owned(), args.1.trim().to_owned()));
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    (exprs, variables)
}

/// `watch --metrics MADDR --metrics-node NODE EXTRA`, started inside `ns`
/// (its endpoint on that namespace's loopback). The holder kinds need the
/// lookups: on a loaded 2-core machine one can take longer than the
/// default 500 ms (then the kind is `unknown`), so they get 10 s.
fn node_tracer(ns: &Netns, maddr: SocketAddr, extra: &[&str]) -> Tracer {
    let mut args = vec![
        "--metrics".to_owned(),
        maddr.to_string(),
        "--metrics-node".into(),
        NODE.into(),
        "--lookup-timeout".into(),
        "10000".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    ns.run(move || Tracer::start(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// Scrapes `addr` (inside `ns`) until `holder_kind` has every kind in
/// `want`.
fn scrape_until(ns: &Netns, addr: SocketAddr, want: &[&str]) -> (String, Scrape) {
    let deadline = Instant::now() + WAIT;
    loop {
        let page = ns.run(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect to the endpoint");
            s.set_read_timeout(Some(WAIT)).unwrap();
            use std::io::{Read as _, Write as _};
            write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text.split_once("\r\n\r\n")
                .expect("an HTTP answer")
                .1
                .to_owned()
        });
        let scrape = parse_scrape(&page);
        let kinds = &scrape["portwatch_bind_failures_total"]["holder_kind"];
        if want.iter().all(|k| kinds.contains(*k)) {
            return (page, scrape);
        }
        assert!(
            Instant::now() < deadline,
            "holder kinds {want:?} never all seen; last page:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Real failures, a real scrape: every metric, label and matched value the
/// rules, their tests and the dashboard use is exported, with the node
/// label on every series; holder kinds are told apart.
#[test]
fn rules_and_dashboard_name_what_portwatch_exports() {
    let ns = Netns::new("pw-deploy");
    let (mport, port) = (port(), port().wrapping_add(13));
    let maddr = SocketAddr::from((Ipv4Addr::LOCALHOST, mport));
    ns.run(|| {
        ip("link add vx0 type vxlan id 42 dstport 4789 local 127.0.0.1");
        ip("link set vx0 up");
    });
    let tracer = node_tracer(&ns, maddr, &["--all-errors", "--netns", &ns.arg()]);
    ns.run(move || {
        // A process holds it.
        let _held = conflict(v4(port), false);
        // Nothing holds it: the address is not on this host.
        let far = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), port));
        assert_eq!(bind(&socket(false, false), far), Err(libc::EADDRNOTAVAIL));
        // The kernel holds it: the VXLAN device's socket.
        assert_eq!(bind(&socket(false, true), v4(4789)), Err(libc::EADDRINUSE));
    });
    for _ in 0..3 {
        tracer.event();
    }
    let (page, scrape) = scrape_until(&ns, maddr, &["kernel", "none"]);
    let (status, _, _) = tracer.stop();
    assert!(status.success());

    let node = format!("node=\"{NODE}\"");
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.contains(&node), "no {node}: {line}");
    }
    let kinds = &scrape["portwatch_bind_failures_total"]["holder_kind"];
    assert!(
        kinds.contains("process") || kinds.contains("unit"),
        "the listening process (or its unit) is the holder: {kinds:?}\n{page}"
    );

    let mut wrong = Vec::new();
    let (panels, variables) = dashboard_exprs();
    for (what, expr, labels) in rule_exprs().iter().chain(&panels) {
        wrong.extend(check_expr(what, expr, labels, &scrape, true));
    }
    // The tests' series: real names and labels (their values are the
    // cases', a pod or a container this scrape has no reason to show).
    for series in test_series() {
        wrong.extend(check_expr(
            "rule test series",
            &series,
            &BTreeSet::new(),
            &scrape,
            false,
        ));
    }
    for (metric, label) in variables {
        if !scrape.get(&metric).is_some_and(|l| l.contains_key(&label)) {
            wrong.push(format!(
                "variable label_values({metric}, {label}): not exported"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}\nscrape:\n{page}", wrong.join("\n"));
}

/// The checker itself catches a wrong name, a wrong label and a wrong
/// value (a check that cannot fail would prove nothing).
#[test]
fn the_name_check_catches_mistakes() {
    let scrape = parse_scrape(
        "# HELP x\nportwatch_events_total{outcome=\"lost\",node=\"n\"} 0\nportwatch_events_total{outcome=\"sent\",node=\"n\"} 3\n",
    );
    let none = BTreeSet::new();
    let ok = "sum by (node, instance) (increase(portwatch_events_total{outcome=\"lost\"}[5m]))";
    assert_eq!(
        check_expr("ok", ok, &none, &scrape, true),
        Vec::<String>::new()
    );
    for bad in [
        "increase(portwatch_event_total[5m])",
        "sum by (reason) (portwatch_events_total)",
        "portwatch_events_total{outcome=\"dropped\"}",
        "portwatch_events_total{result=\"lost\"}",
        "portwatch_events_total +",
    ] {
        assert_eq!(
            check_expr("bad", bad, &none, &scrape, true).len(),
            1,
            "{bad}"
        );
    }
    let labels = template_labels(
        "{{ with $labels.node }}{{ . }} {{ end }}{{ $labels.port }} {{ $value | printf \"%.0f\" }}",
    );
    assert_eq!(labels, BTreeSet::from(["node".into(), "port".into()]));
    let legend = legend_labels("{{node}} {{port}}");
    assert_eq!(legend, labels);
    assert_eq!(check_expr("legend", ok, &legend, &scrape, true).len(), 1);
}

/// An HTTP/1.0 GET of `path` from `addr` (call inside the namespace): the
/// body of a 200 answer, None before the server listens or on another
/// status.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
}

/// The shipped rules in Debian's real Prometheus, scraping a real portwatch
/// after one real failure: PortwatchBindFailures fires for that node,
/// reason and holder kind (its first failure, which `increase()` alone
/// misses), every rule evaluates without error, and the per-port loop
/// alert stays quiet.
#[test]
fn prometheus_fires_the_shipped_alert_on_a_real_failure() {
    let ns = Netns::new("pw-dalert");
    let (mport, pport, port) = (port(), port().wrapping_add(17), port().wrapping_add(29));
    let maddr = SocketAddr::from((Ipv4Addr::LOCALHOST, mport));
    let paddr = SocketAddr::from((Ipv4Addr::LOCALHOST, pport));
    let dir = Scratch::new("dalert");
    let rules = repo_file("deploy/prometheus/portwatch-rules.yaml");
    dir.write(
        "prometheus.yml",
        &format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: portwatch\n    static_configs: [{{targets: ['{maddr}']}}]\n",
            rules.display()
        ),
    );
    // Only this namespace: other suites fail binds on the host meanwhile.
    let tracer = node_tracer(&ns, maddr, &["--netns", &ns.arg()]);
    let mut prometheus = prometheus::start(
        &ns,
        &dir.0.join("prometheus.yml"),
        &dir.0.join("data"),
        paddr,
    );
    ns.run(move || {
        let _held = conflict(v4(port), false);
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let firing = loop {
        let alerts = ns.run(move || http_get(paddr, "/api/v1/alerts"));
        let alerts: Value = alerts.map_or(Value::Null, |a| serde_json::from_str(&a).unwrap());
        let found = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| {
                a["labels"]["alertname"] == "PortwatchBindFailures" && a["state"] == "firing"
            });
        if let Some(alert) = found {
            break alert.clone();
        }
        assert!(
            Instant::now() < deadline,
            "PortwatchBindFailures never fired; last answer: {alerts}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let labels = &firing["labels"];
    assert_eq!(labels["node"], NODE, "{firing:#}");
    assert_eq!(labels["reason"], "listener", "{firing:#}");
    assert!(
        labels["holder_kind"] == "process" || labels["holder_kind"] == "unit",
        "this test's own process holds the port: {firing:#}"
    );
    assert_eq!(firing["value"], "1e+00", "one failure: {firing:#}");
    assert!(
        firing["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("portwatch who PORT"),
        "{firing:#}"
    );
    let rules = ns
        .run(move || http_get(paddr, "/api/v1/rules"))
        .expect("the rules");
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let all: Vec<&Value> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(all.len(), 5, "{rules:#}");
    for rule in all {
        assert_eq!(rule["health"], "ok", "{rule:#}");
        if rule["name"] == "PortKeepsFailingToBind" {
            assert_eq!(
                rule["state"], "inactive",
                "one failure is no loop: {rule:#}"
            );
        }
    }
    prometheus.kill();
    let (status, _, _) = tracer.stop();
    assert!(status.success());
}

/// A real pod's container holding the port (Debian's containerd, the CRI
/// plugin's annotations, its own network namespace): the failure in that
/// namespace counts under `holder_kind="pod"`, and no pod or container
/// name reaches a label.
#[test]
fn a_pod_holding_the_port_counts_as_a_pod() {
    let mut ctd = containerd::Containerd::start("dpod");
    let (port, mport) = (port(), port().wrapping_add(19));
    let id = format!("{:056x}{:08x}", std::process::id(), 7);
    let pid = ctd.run(
        &id,
        &containerd::cri_annotations("shop", "web-0", "web"),
        &["/bin/busybox", "httpd", "-f", "-p", &port.to_string()],
    );
    let ns = Netns::new("pw-dpod");
    let maddr = SocketAddr::from((Ipv4Addr::LOCALHOST, mport));
    let tracer = node_tracer(&ns, maddr, &["--netns", &format!("/proc/{pid}/ns/net")]);
    // A second server in the pod's namespace, until httpd holds the port.
    let bind = format!("import socket; socket.socket().bind(('0.0.0.0', {port}))");
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new("timeout")
            .args(["10", "nsenter", &format!("--net=/proc/{pid}/ns/net")])
            .args(["/usr/bin/python3", "-c", &bind])
            .output()
            .expect("nsenter python3");
        if String::from_utf8_lossy(&out.stderr).contains("Address already in use") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "httpd never held {port}: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ev = tracer.event();
    assert_eq!(
        ev["holders"][0]["container"]["pod"]["name"], "web-0",
        "{ev:#}"
    );
    let (page, _) = scrape_until(&ns, maddr, &["pod"]);
    for name in ["web-0", "shop", &id[..12]] {
        assert!(!page.contains(name), "{name} is in a label:\n{page}");
    }
    let (status, _, _) = tracer.stop();
    assert!(status.success());
    drop(ctd);
}

/// `--metrics-node` and PORTWATCH_NODE (the DaemonSet's downward API) go
/// through one check: a bad name is one line and status 2, from either.
#[test]
fn bad_node_name_is_one_line_from_flag_or_env() {
    for (flag, env) in [(Some("node a"), None), (None, Some("node/a"))] {
        let mut cmd = Command::new(bin());
        cmd.args(["watch", "--metrics", "127.0.0.1:9891"]);
        cmd.env_remove("PORTWATCH_NODE");
        if let Some(name) = flag {
            cmd.args(["--metrics-node", name]);
        }
        if let Some(name) = env {
            cmd.env("PORTWATCH_NODE", name);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let name = flag.or(env).unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.starts_with("portwatch: "), "{err}");
        assert!(
            err.contains(&format!("'{name}' is not a node name")),
            "{err}"
        );
    }
}
