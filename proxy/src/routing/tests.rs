#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! Routing rules as data: hand-built snapshots in, decisions (or readable errors) out, with
//! seeded randomness so weighted choices are checked exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::errors::ErrorKind;
use crate::model::*;

fn re(p: &str) -> StringMatch {
    StringMatch::Regex(regex::Regex::new(&format!("^(?:{p})$")).unwrap())
}

fn wc(cluster: &str, weight: u32) -> WeightedCluster {
    WeightedCluster {
        cluster: cluster.into(),
        weight,
    }
}

fn route(name: &str, matches: Vec<HttpMatch>, clusters: Vec<WeightedCluster>) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        matches,
        clusters,
        timeout: None,
        retries: Default::default(),
        fault: None,
    }
}

fn service(routes: Vec<HttpRoute>) -> Service {
    Service {
        name: "reviews.default.svc.cluster.local".into(),
        namespace: "default".into(),
        aliases: vec!["reviews".into(), "reviews.default".into()],
        ports: vec![Port {
            number: 9080,
            name: "http".into(),
            protocol: Protocol::Http,
            target_port: 9080,
        }],
        http: routes,
        tcp: vec![],
        origin: "VirtualService default/reviews".into(),
        addresses: vec![],
    }
}

fn endpoint(ip: &str, weight: u32) -> Endpoint {
    Endpoint {
        addr: format!("{ip}:9080").parse().unwrap(),
        mesh_port: Some(15006),
        identity: String::new(),
        weight,
        workload: "default/reviews-v1".into(),
        labels: BTreeMap::new(),
    }
}

fn mk_spec(name: &str, simple: LbPolicy) -> ClusterSpec {
    let lb = crate::balance::LbConfig {
        simple,
        ..Default::default()
    };
    ClusterSpec {
        name: name.into(),
        service: "reviews.default.svc.cluster.local".into(),
        port: 9080,
        subset: String::new(),
        protocol: Protocol::Http,
        lb,
        tls: UpstreamTlsMode::Auto,
        origination: None,
        identities: vec![],
        policy: Default::default(),
        outlier: None,
    }
}

fn cluster(name: &str, lb: LbPolicy, eps: Vec<Endpoint>) -> Cluster {
    Cluster::new(Arc::new(mk_spec(name, lb)), Arc::from(eps))
}

struct Req {
    method: Method,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
    port: u16,
}

impl Req {
    fn get(path: &'static str) -> Self {
        Self {
            method: Method::GET,
            path,
            query: None,
            headers: HeaderMap::new(),
            port: 9080,
        }
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.insert(k, HeaderValue::from_static(v));
        self
    }
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            scheme: "http",
            authority: "reviews:9080",
            port: self.port,
            path: self.path,
            query: self.query,
            headers: &self.headers,
        }
    }
}

fn chosen(svc: &Service, req: &Req) -> Option<String> {
    match_route(svc, &req.view()).map(|r| svc.http[r].name.clone())
}

#[test]
fn first_matching_route_wins() {
    let m = |uri| HttpMatch {
        uri: Some(uri),
        ..Default::default()
    };
    let svc = service(vec![
        route("exact", vec![m(StringMatch::Exact("/a".into()))], vec![]),
        route("prefix", vec![m(StringMatch::Prefix("/a".into()))], vec![]),
        route("regex", vec![m(re("/r/[0-9]+"))], vec![]),
        route("default", vec![], vec![]),
    ]);
    let cases = [
        ("/a", "exact"),
        ("/ab", "prefix"),
        ("/r/12", "regex"),
        ("/r/12x", "default"), // regexes match the whole path
        ("/zzz", "default"),
    ];
    for (path, want) in cases {
        assert_eq!(
            chosen(&svc, &Req::get(path)).as_deref(),
            Some(want),
            "{path}"
        );
    }
}

#[test]
fn ignore_uri_case_applies_to_exact_and_prefix() {
    let svc = service(vec![route(
        "ci",
        vec![HttpMatch {
            uri: Some(StringMatch::Prefix("/API".into())),
            ignore_uri_case: true,
            ..Default::default()
        }],
        vec![],
    )]);
    assert!(chosen(&svc, &Req::get("/api/v1")).is_some());
    assert!(chosen(&svc, &Req::get("/ap")).is_none());
}

#[test]
fn headers_without_headers_method_port_and_query() {
    let hm = |name: &str, v: StringMatch| HeaderMatch {
        name: http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value: v,
    };
    let svc = service(vec![
        route(
            "jason",
            vec![HttpMatch {
                headers: vec![hm("end-user", StringMatch::Exact("jason".into()))],
                without_headers: vec![hm("x-canary", StringMatch::Prefix(String::new()))],
                method: Some(StringMatch::Exact("GET".into())),
                port: Some(9080),
                ..Default::default()
            }],
            vec![],
        ),
        route(
            "query",
            vec![HttpMatch {
                query_params: vec![QueryMatch {
                    name: "v".into(),
                    value: re("[0-9]"),
                }],
                ..Default::default()
            }],
            vec![],
        ),
    ]);
    let jason = Req::get("/").header("end-user", "jason");
    assert_eq!(chosen(&svc, &jason).as_deref(), Some("jason"));
    let canary = Req::get("/")
        .header("end-user", "jason")
        .header("x-canary", "1");
    assert_eq!(chosen(&svc, &canary), None);
    let mut post = Req::get("/").header("end-user", "jason");
    post.method = Method::POST;
    assert_eq!(chosen(&svc, &post), None);
    let mut other_port = Req::get("/").header("end-user", "jason");
    other_port.port = 80;
    assert_eq!(chosen(&svc, &other_port), None);
    let mut q = Req::get("/");
    q.query = Some("a=b&v=7");
    assert_eq!(chosen(&svc, &q).as_deref(), Some("query"));
    q.query = Some("v=77");
    assert_eq!(chosen(&svc, &q), None);
}

#[test]
fn weighted_choice_follows_relative_weights() {
    // 80/20 written as 4/1: weights are relative.
    let clusters = [wc("v1", 4), wc("v2", 1)];
    let mut rng = StdRng::seed_from_u64(7);
    let n = 10_000;
    let v1 = (0..n)
        .filter(|_| pick_weighted(&clusters, &mut rng).unwrap().cluster == "v1")
        .count();
    let share = v1 as f64 / n as f64;
    assert!((share - 0.8).abs() < 0.02, "v1 got {share}");
}

#[test]
fn weighted_choice_edge_cases() {
    let mut rng = StdRng::seed_from_u64(1);
    assert!(pick_weighted(&[], &mut rng).is_none());
    assert_eq!(
        pick_weighted(&[wc("only", 0)], &mut rng).unwrap().cluster,
        "only"
    );
    let two = [wc("never", 0), wc("always", 3)];
    for _ in 0..100 {
        let c = pick_weighted(&two, &mut rng).unwrap();
        assert_eq!(c.cluster, "always");
    }
}

#[test]
fn round_robin_cycles_and_honours_weights() {
    let mut rng = StdRng::seed_from_u64(1);
    let c = cluster(
        "rr",
        LbPolicy::RoundRobin,
        vec![endpoint("10.0.0.1", 1), endpoint("10.0.0.2", 2)],
    );
    let ctx = crate::balance::PickCtx::at(tokio::time::Instant::now());
    let picks: Vec<usize> = (0..300)
        .map(|_| pick_endpoint(&c, &ctx, &mut rng).unwrap())
        .collect();
    let ones = picks.iter().filter(|i| **i == 1).count();
    // The balancer interleaves turns (a Weyl sequence), so shares are exact only in the
    // long run: within a few turns of 200 of 300.
    assert!(
        (197..=203).contains(&ones),
        "weight 2 of 3 gets ~200 of 300 turns: {ones}"
    );
    let empty = cluster("none", LbPolicy::Random, vec![]);
    let e = pick_endpoint(&empty, &ctx, &mut rng).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoHealthyUpstream);
    assert_eq!(
        e.reason_header(),
        "no_healthy_endpoints(cluster=none)",
        "names the cluster when the route targets no subset"
    );
}

#[test]
fn authority_parsing() {
    assert_eq!(
        parse_authority("reviews:9080", 80).unwrap(),
        ("reviews", 9080)
    );
    assert_eq!(parse_authority("reviews", 80).unwrap(), ("reviews", 80));
    assert_eq!(parse_authority("[::1]:81", 80).unwrap(), ("::1", 81));
    assert_eq!(parse_authority("[::1]", 80).unwrap(), ("::1", 80));
    assert_eq!(
        parse_authority("reviews:x", 80).unwrap_err().kind,
        ErrorKind::BadRequest
    );
    assert_eq!(
        parse_authority("", 80).unwrap_err().kind,
        ErrorKind::BadRequest
    );
}

fn snapshot() -> Snapshot {
    let mut parts = Parts::default();
    parts.services.insert(
        "reviews.default.svc.cluster.local".into(),
        Arc::new(service(vec![route(
            "default",
            vec![],
            vec![wc("outbound|9080||reviews.default.svc.cluster.local", 0)],
        )])),
    );
    let name = "outbound|9080||reviews.default.svc.cluster.local";
    parts
        .clusters
        .insert(name.into(), Arc::new(mk_spec(name, LbPolicy::RoundRobin)));
    parts
        .endpoints
        .insert(name.into(), Arc::from(vec![endpoint("10.0.0.1", 1)]));
    Snapshot::build(&parts)
}

#[test]
fn select_by_alias_and_explain_failures() {
    let snap = snapshot();
    let mut rng = StdRng::seed_from_u64(1);
    let req = Req::get("/");
    let d = select_http(&snap, "Reviews", &req.view(), &mut rng).unwrap();
    let ctx = crate::balance::PickCtx::at(tokio::time::Instant::now());
    let ep = pick_endpoint(&d.cluster, &ctx, &mut rng).unwrap();
    assert_eq!(d.cluster.endpoints[ep].addr.to_string(), "10.0.0.1:9080");
    assert_eq!(d.route().name, "default");

    let e = select_http(&snap, "ratings", &req.view(), &mut rng).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoRoute);
    assert_eq!(
        e.detail,
        "no service named ratings:9080 is known to this proxy"
    );

    let mut wrong_port = Req::get("/");
    wrong_port.port = 1234;
    let e = select_http(&snap, "reviews", &wrong_port.view(), &mut rng).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoRoute);

    let t = select_tcp(&snap, "reviews.default", 9080, &mut rng).unwrap();
    assert_eq!(
        t.cluster.spec.name,
        "outbound|9080||reviews.default.svc.cluster.local"
    );
}

#[test]
fn unknown_cluster_and_empty_cluster_are_503s() {
    let mut parts = Parts::default();
    parts.services.insert(
        "a".into(),
        Arc::new(Service {
            name: "a".into(),
            ports: vec![],
            aliases: vec![],
            http: vec![route("r", vec![], vec![wc("missing", 1)])],
            ..service(vec![])
        }),
    );
    let snap = Snapshot::build(&parts);
    let mut rng = StdRng::seed_from_u64(1);
    let req = Req::get("/");
    let e = select_http(&snap, "a", &req.view(), &mut rng).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoCluster);

    let d = select_http(
        &snapshot_without_endpoints(),
        "reviews",
        &req.view(),
        &mut rng,
    )
    .unwrap();
    let ctx = crate::balance::PickCtx::at(tokio::time::Instant::now());
    let e = pick_endpoint(&d.cluster, &ctx, &mut rng).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoHealthyUpstream);
    assert_eq!(e.kind.code(), "no-healthy-upstream");
}

fn snapshot_without_endpoints() -> Snapshot {
    let snap = snapshot();
    let mut parts = Parts {
        services: snap.services.clone(),
        ..Default::default()
    };
    for (name, c) in &snap.clusters {
        parts.clusters.insert(name.clone(), c.spec.clone());
    }
    Snapshot::build(&parts)
}
