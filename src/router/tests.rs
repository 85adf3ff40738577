//! Matching, priority, rewrites and compile errors of the route table.

use super::*;

/// A route as a test writes it: the matching keys plus the service it names.
#[derive(Clone)]
struct R {
    path: String,
    service: String,
    match_kind: MatchKind,
    methods: Vec<String>,
    host: Option<String>,
    strip_prefix: bool,
    rewrite: Option<String>,
}

fn route(path: &str, service: &str) -> R {
    R {
        path: path.into(),
        service: service.into(),
        match_kind: MatchKind::Prefix,
        methods: vec![],
        host: None,
        strip_prefix: true,
        rewrite: None,
    }
}

fn specs(routes: &[R]) -> Vec<RouteSpec<'_>> {
    routes
        .iter()
        .map(|r| RouteSpec {
            name: None,
            path: &r.path,
            match_kind: r.match_kind,
            methods: &r.methods,
            host: r.host.as_deref(),
            strip_prefix: r.strip_prefix,
            rewrite: r.rewrite.as_deref(),
            claims: false,
            conditional: r.service.ends_with("-if-canary"),
        })
        .collect()
}

fn compile(routes: &[R]) -> Result<RouteTable<String>, Invalid> {
    RouteTable::compile(&specs(routes), |i| Ok(routes[i].service.clone()))
}

fn table(routes: &[R]) -> RouteTable<String> {
    compile(routes).unwrap()
}

fn find(
    t: &RouteTable<String>,
    method: &str,
    host: &str,
    path: &str,
) -> Result<(String, String), GatewayError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    // A test's conditional route (service `*-if-canary`) takes requests to hosts starting
    // with `canary`.
    let m = t.match_request(
        &RequestView {
            segments: &segs,
            trailing_slash: path.len() > 1 && path.ends_with('/'),
            host,
            method: &method,
        },
        |_| host.starts_with("canary"),
    )?;
    let mut m = m;
    t.render_rewrite(&mut m, None, "rid", None).unwrap();
    Ok((t.routes()[m.route].target.clone(), m.upstream_path))
}

#[test]
fn prefix_matches_itself_and_below_but_not_siblings() {
    let t = table(&[route("/api/users", "users")]);
    assert_eq!(
        find(&t, "GET", "h", "/api/users").unwrap(),
        ("users".into(), "/".into())
    );
    assert_eq!(
        find(&t, "GET", "h", "/api/users/42").unwrap(),
        ("users".into(), "/42".into())
    );
    assert_eq!(
        find(&t, "GET", "h", "/api/usersX"),
        Err(GatewayError::RouteNotFound)
    );
    assert_eq!(
        find(&t, "GET", "h", "/api"),
        Err(GatewayError::RouteNotFound)
    );
}

#[test]
fn exact_beats_literal_beats_param_beats_prefix_regardless_of_order() {
    let mut exact = route("/api/users/me", "exact");
    exact.match_kind = MatchKind::Exact;
    let routes = [
        route("/api", "prefix"),
        route("/api/users/:id", "param"),
        route("/api/users/me", "literal-prefix"),
        exact,
    ];
    let t = table(&routes);
    assert_eq!(find(&t, "GET", "h", "/api/users/me").unwrap().0, "exact");
    assert_eq!(
        find(&t, "GET", "h", "/api/users/me/x").unwrap().0,
        "literal-prefix"
    );
    assert_eq!(find(&t, "GET", "h", "/api/users/7").unwrap().0, "param");
    assert_eq!(find(&t, "GET", "h", "/api/other").unwrap().0, "prefix");
}

#[test]
fn more_literal_segments_win_over_earlier_parameter() {
    let mut a = route("/:tenant/orders", "param-first");
    a.match_kind = MatchKind::Exact;
    let mut b = route("/shop/:section", "literal-first");
    b.match_kind = MatchKind::Exact;
    let t = table(&[a, b]);
    assert_eq!(
        find(&t, "GET", "h", "/shop/orders").unwrap().0,
        "literal-first"
    );
    assert_eq!(
        find(&t, "GET", "h", "/acme/orders").unwrap().0,
        "param-first"
    );
}

#[test]
fn method_filter_falls_through_then_405() {
    let mut get = route("/api/users/:id", "reader");
    get.methods = vec!["GET".into()];
    let mut post = route("/api/items", "writer");
    post.methods = vec!["post".into()];
    let t = table(&[get, route("/api", "fallback"), post]);
    assert_eq!(find(&t, "HEAD", "h", "/api/users/1").unwrap().0, "reader");
    assert_eq!(
        find(&t, "DELETE", "h", "/api/users/1").unwrap().0,
        "fallback"
    );
    let t = table(&[{
        let mut r = route("/only", "x");
        r.methods = vec!["GET".into(), "PUT".into()];
        r
    }]);
    match find(&t, "POST", "h", "/only") {
        Err(GatewayError::MethodNotAllowed { allow }) => {
            assert_eq!(allow, ["GET", "PUT", "HEAD"])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn host_specific_route_wins_and_falls_back() {
    let mut special = route("/api", "special");
    special.host = Some("API.Example.com".into());
    let mut wild = route("/api", "wild");
    wild.host = Some("*.example.com".into());
    let t = table(&[route("/api", "any"), special, wild]);
    assert_eq!(
        find(&t, "GET", "api.example.com", "/api").unwrap().0,
        "special"
    );
    assert_eq!(find(&t, "GET", "x.example.com", "/api").unwrap().0, "wild");
    assert_eq!(find(&t, "GET", "example.com", "/api").unwrap().0, "any");
}

#[test]
fn a_table_says_whether_any_route_names_a_host() {
    assert!(!table(&[route("/api", "any"), route("/b", "b")]).routes_by_host());
    let mut special = route("/b", "special");
    special.host = Some("api.example.com".into());
    assert!(table(&[route("/api", "any"), special]).routes_by_host());
}

#[test]
fn rewrites_keep_query_free_paths() {
    let mut tpl = route("/api/users/:id", "u");
    tpl.rewrite = Some("/v2/users/{id}/profile".into());
    let mut keep = route("/keep", "k");
    keep.strip_prefix = false;
    let mut rest = route("/files/*path", "f");
    rest.rewrite = Some("/store/{path}".into());
    let t = table(&[tpl, keep, rest]);
    assert_eq!(
        find(&t, "GET", "h", "/api/users/42").unwrap().1,
        "/v2/users/42/profile"
    );
    assert_eq!(find(&t, "GET", "h", "/keep/a/").unwrap().1, "/keep/a/");
    assert_eq!(
        find(&t, "GET", "h", "/files/a/b.txt").unwrap().1,
        "/store/a/b.txt"
    );
    assert_eq!(find(&t, "GET", "h", "/files").unwrap().1, "/store/");
}

#[test]
fn rejects_bad_patterns_and_duplicates_with_key_path() {
    let cases: Vec<(Vec<R>, &str)> = vec![
        (vec![route("api", "s")], "routes[0].path"),
        (vec![route("/a/*/b", "s")], "routes[0].path"),
        (vec![route("/a/:", "s")], "routes[0].path"),
        (vec![route("/a/:x/:x", "s")], "routes[0].path"),
        (vec![route("/a b", "s")], "routes[0].path"),
        (vec![route("/a", "s"), route("/a/*", "s")], "routes[1].path"),
        (
            vec![route("/u/:id", "s"), route("/u/:name", "t")],
            "routes[1].path",
        ),
        (
            vec![{
                let mut r = route("/a/:id", "s");
                r.rewrite = Some("/{nope}".into());
                r
            }],
            "routes[0].rewrite",
        ),
        (
            vec![{
                let mut r = route("/a", "s");
                r.methods = vec!["FETCH".into()];
                r
            }],
            "routes[0].methods",
        ),
        (
            vec![{
                let mut r = route("/a", "s");
                r.host = Some("a.com:80".into());
                r
            }],
            "routes[0].host",
        ),
        (
            vec![{
                let mut r = route("/a/*", "s");
                r.match_kind = MatchKind::Exact;
                r
            }],
            "routes[0].match",
        ),
    ];
    for (routes, key) in cases {
        let err = compile(&routes).err().unwrap();
        assert_eq!(err.key, key, "{err}");
    }
    let ghost = [route("/a", "ghost")];
    let err = RouteTable::<()>::compile(&specs(&ghost), |i| {
        Err(Invalid::new(
            "service",
            format!("unknown service {:?}", ghost[i].service),
        ))
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "routes[0].service: unknown service \"ghost\""
    );
}

#[test]
fn same_pattern_with_disjoint_methods_is_not_a_duplicate() {
    let mut a = route("/a", "s");
    a.methods = vec!["GET".into()];
    let mut b = route("/a", "t");
    b.methods = vec!["POST".into()];
    let t = table(&[a, b]);
    assert_eq!(find(&t, "POST", "h", "/a").unwrap().0, "t");
}

#[test]
fn thousand_routes_still_match_the_right_one() {
    let routes: Vec<R> = (0..1000)
        .map(|i| route(&format!("/svc{i}/items"), &format!("s{i}")))
        .collect();
    let t = table(&routes);
    assert_eq!(
        find(&t, "GET", "h", "/svc999/items/5").unwrap(),
        ("s999".into(), "/5".into())
    );
    assert_eq!(
        find(&t, "GET", "h", "/svc1000/items"),
        Err(GatewayError::RouteNotFound)
    );
}

#[test]
fn rewrites_use_the_one_template_language() {
    let specs = [RouteSpec {
        name: None,
        path: "/files/:bucket/*rest",
        match_kind: MatchKind::Prefix,
        methods: &[],
        host: None,
        strip_prefix: true,
        rewrite: Some("/store/{claim.tenant}/{bucket}/{request_id}/{rest}"),
        claims: true,
        conditional: false,
    }];
    let t = RouteTable::compile(&specs, |_| Ok(())).unwrap();
    let segs = ["files", "b1", "x", "y.txt"];
    let mut m = t
        .match_request(
            &RequestView {
                segments: &segs,
                trailing_slash: false,
                host: "h",
                method: &Method::GET,
            },
            |_| true,
        )
        .unwrap();
    assert!(
        m.params
            .iter()
            .any(|(n, v)| &**n == "rest" && v == "x/y.txt")
    );
    let tenant = Identity::for_test(None, r#"{"tenant": "a b/c"}"#);
    t.render_rewrite(&mut m, Some(&tenant), "r1", None).unwrap();
    assert_eq!(m.upstream_path, "/store/a%20b%2Fc/b1/r1/x/y.txt");
    assert!(t.render_rewrite(&mut m, None, "r1", None).is_err());
    let no_claims = [RouteSpec {
        claims: false,
        ..specs[0]
    }];
    let err = RouteTable::compile(&no_claims, |_| Ok(())).err().unwrap();
    assert_eq!(err.key, "routes[0].rewrite");
}

#[test]
fn a_route_with_conditions_is_tried_before_the_same_pattern_without_whatever_the_file_order() {
    let mut post_only = route("/api/catalog", "post-if-canary");
    post_only.methods = vec!["POST".into()];
    let t = table(&[
        route("/api/catalog", "stable"),
        route("/api/catalog", "v2-if-canary"),
        post_only,
    ]);
    let service = |host: &str| find(&t, "GET", host, "/api/catalog").map(|(s, _)| s);
    assert_eq!(service("canary.example").unwrap(), "v2-if-canary");
    assert_eq!(service("www.example").unwrap(), "stable");
    // Conditions that fail leave no trace: the only route is the conditional one → 404.
    let only = table(&[route("/beta", "beta-if-canary")]);
    assert!(matches!(
        find(&only, "GET", "www", "/beta"),
        Err(GatewayError::RouteNotFound)
    ));
    // A conditional route's methods count only when its conditions hold.
    let mut post = route("/beta", "beta-if-canary");
    post.methods = vec!["POST".into()];
    let only_post = table(&[post]);
    assert!(matches!(
        find(&only_post, "GET", "www", "/beta"),
        Err(GatewayError::RouteNotFound)
    ));
    assert!(matches!(
        find(&only_post, "GET", "canary", "/beta"),
        Err(GatewayError::MethodNotAllowed { .. })
    ));
}
