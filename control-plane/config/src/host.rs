//! Host names and visibility: Istio's short-name rule and `exportTo`.
//!
//! Both are needed by cross-reference validation (in the index) and by translation, and both
//! must agree, so they live in one place.

/// Resolves a host as Istio does: a name without a dot (`reviews`) is a Kubernetes service
/// in the object's namespace (`reviews.<namespace>.svc.<dns_domain>`); a name with a dot is
/// taken as written. Wildcards (`*.example.com`, `*`) are returned unchanged.
pub fn resolve(host: &str, namespace: &str, dns_domain: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{dns_domain}")
    }
}

/// Whether a (possibly wildcard) VirtualService host covers a service's FQDN.
pub fn host_matches(pattern: &str, fqdn: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            fqdn.len() > suffix.len() + 1 && fqdn.ends_with(suffix) && {
                let head = &fqdn[..fqdn.len() - suffix.len()];
                head.ends_with('.')
            }
        }
        None => pattern.eq_ignore_ascii_case(fqdn),
    }
}

/// Whether an object in `object_ns` with this `exportTo` is visible from `viewer_ns`.
/// Empty means visible everywhere (Istio's default, with no mesh-wide override); `.` is
/// the object's own namespace; `*` everywhere; `~` nowhere; other entries name namespaces.
pub fn visible(export_to: &[String], object_ns: &str, viewer_ns: &str) -> bool {
    if export_to.is_empty() {
        return true;
    }
    export_to.iter().any(|entry| match entry.as_str() {
        "*" => true,
        "." => object_ns == viewer_ns,
        "~" => false,
        ns => ns == viewer_ns,
    })
}

/// Names by which a proxy in `proxy_ns` can reach `fqdn`, besides the FQDN itself
/// (Kubernetes DNS search paths): `x`, `x.N`, `x.N.svc` in its own namespace N, and
/// `x.M`, `x.M.svc` for namespace M. Hosts outside `svc.<dns_domain>` have no aliases.
pub fn aliases(fqdn: &str, proxy_ns: &str, dns_domain: &str) -> Vec<String> {
    let suffix = format!(".svc.{dns_domain}");
    let Some(head) = fqdn.strip_suffix(&suffix) else {
        return Vec::new();
    };
    let Some((name, ns)) = head.split_once('.') else {
        return Vec::new();
    };
    if name.is_empty() || ns.is_empty() || ns.contains('.') {
        return Vec::new();
    }
    let mut out = Vec::new();
    if ns == proxy_ns {
        out.push(name.to_string());
    }
    out.push(format!("{name}.{ns}"));
    out.push(format!("{name}.{ns}.svc"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_object_namespace() {
        assert_eq!(
            resolve("reviews", "prod", "cluster.local"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(
            resolve("reviews.prod", "default", "cluster.local"),
            "reviews.prod"
        );
        assert_eq!(
            resolve("api.example.com", "x", "cluster.local"),
            "api.example.com"
        );
        assert_eq!(
            resolve("*.example.com", "x", "cluster.local"),
            "*.example.com"
        );
    }

    #[test]
    fn wildcards() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "apiexample.com"));
        assert!(host_matches("*", "anything"));
        assert!(host_matches("a.b", "a.b"));
    }

    #[test]
    fn export_to() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(visible(&[], "a", "b"));
        assert!(visible(&s(&["."]), "a", "a"));
        assert!(!visible(&s(&["."]), "a", "b"));
        assert!(visible(&s(&["*"]), "a", "b"));
        assert!(visible(&s(&[".", "b"]), "a", "b"));
        assert!(!visible(&s(&["~"]), "a", "a"));
    }

    #[test]
    fn alias_sets() {
        let d = "cluster.local";
        assert_eq!(
            aliases("reviews.default.svc.cluster.local", "default", d),
            vec!["reviews", "reviews.default", "reviews.default.svc"]
        );
        assert_eq!(
            aliases("reviews.prod.svc.cluster.local", "default", d),
            vec!["reviews.prod", "reviews.prod.svc"]
        );
        assert!(aliases("api.example.com", "default", d).is_empty());
    }
}
