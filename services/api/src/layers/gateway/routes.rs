//! The HTTP routes, read from the `google.api.http` rule on each method of the descriptor
//! set: a new RPC is reachable over HTTP/JSON by its annotation alone.
//!
//! Templates are the subset AIP-127 uses: literal segments, `{field}` or `{nested.field}`
//! variables that take one segment each, and an optional `:verb` after the last segment.
use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, MethodDescriptor, Value};

/// One HTTP binding of one gRPC method.
#[derive(Debug)]
pub struct Route {
    pub verb: http::Method,
    /// As written in the proto, e.g. `/v1/enrollments/{id}:complete`.
    pub template: String,
    segments: Vec<Segment>,
    custom_verb: Option<String>,
    /// `*` (the whole request), a field name, or empty (no body: query parameters only).
    pub body: String,
    pub method: MethodDescriptor,
    /// `/coursewire.v1.EnrollmentService/CompleteEnrollment`.
    pub grpc_path: String,
}

#[derive(Debug, PartialEq)]
enum Segment {
    Literal(String),
    /// A request field path, dot-separated.
    Variable(String),
}

/// What a request path matched.
pub enum Matched<'a> {
    Route(&'a Route, Vec<(String, String)>),
    /// The path exists, but not with this verb: these verbs answer it.
    WrongVerb(Vec<http::Method>),
    None,
}

pub struct Routes(Vec<Route>);

impl Routes {
    /// Every rule of every service in `pool`; a rule that does not parse is a bug in our
    /// protos, reported at start rather than as a 404 later.
    pub fn from_pool(pool: &DescriptorPool) -> anyhow::Result<Routes> {
        let Some(http) = pool.get_extension_by_name("google.api.http") else {
            anyhow::bail!("the descriptor set lacks google/api/annotations.proto");
        };
        let mut routes = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let rule = options.get_extension(&http);
                let Value::Message(rule) = rule.as_ref() else { continue };
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                let mut add = |rule: &prost_reflect::DynamicMessage| -> anyhow::Result<()> {
                    let route = Route::from_rule(rule, &method, &grpc_path)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", method.full_name()))?;
                    routes.push(route);
                    Ok(())
                };
                add(rule)?;
                if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
                    for binding in more {
                        if let Value::Message(binding) = binding {
                            add(binding)?;
                        }
                    }
                }
            }
        }
        Ok(Routes(routes))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.0.iter()
    }

    /// The route for `verb path` and the values of its variables (percent-decoded).
    pub fn find(&self, verb: &http::Method, path: &str) -> Matched<'_> {
        let Some(parts) = path.strip_prefix('/').map(|p| p.split('/').collect::<Vec<_>>()) else {
            return Matched::None;
        };
        let mut verbs = Vec::new();
        for route in &self.0 {
            if let Some(bindings) = route.bind(&parts) {
                if route.verb == verb {
                    return Matched::Route(route, bindings);
                }
                if !verbs.contains(&route.verb) {
                    verbs.push(route.verb.clone());
                }
            }
        }
        if verbs.is_empty() { Matched::None } else { Matched::WrongVerb(verbs) }
    }
}

impl Route {
    fn from_rule(
        rule: &prost_reflect::DynamicMessage,
        method: &MethodDescriptor,
        grpc_path: &str,
    ) -> anyhow::Result<Route> {
        let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let (verb, template) = ["get", "put", "post", "delete", "patch"]
            .into_iter()
            .find(|v| rule.has_field_by_name(v))
            .map(|v| (http::Method::from_bytes(v.to_ascii_uppercase().as_bytes()).expect("a standard verb"), text(v)))
            .ok_or_else(|| anyhow::anyhow!("only get, put, post, delete and patch rules are supported"))?;
        let (segments, custom_verb) = parse_template(&template)?;
        let body = text("body");
        let route = Route {
            verb,
            template,
            segments,
            custom_verb,
            body,
            method: method.clone(),
            grpc_path: grpc_path.to_string(),
        };
        let input = method.input();
        for variable in route.variables() {
            field_path(&input, variable)
                .ok_or_else(|| anyhow::anyhow!("{}: no request field `{variable}`", route.template))?;
        }
        if !route.body.is_empty() && route.body != "*" && input.get_field_by_name(&route.body).is_none() {
            anyhow::bail!("body `{}` is not a request field", route.body);
        }
        Ok(route)
    }

    /// The variables' values if the path's segments (split once by `find`) fit this route.
    fn bind(&self, parts: &[&str]) -> Option<Vec<(String, String)>> {
        if parts.len() != self.segments.len() {
            return None;
        }
        let (last, head) = parts.split_last()?;
        // The verb is part of the template: `enr_1:complete` fits `/v1/enrollments/{id}:complete`
        // and never `/v1/enrollments/{id}` (a `:` in an id is sent encoded, as `%3A`).
        let last = match &self.custom_verb {
            Some(verb) => last.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None if last.contains(':') => return None,
            None => last,
        };
        let mut bindings = Vec::new();
        for (segment, part) in self.segments.iter().zip(head.iter().copied().chain([last])) {
            match segment {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable(field) => {
                    let value = percent_encoding::percent_decode_str(part).decode_utf8().ok()?;
                    if value.is_empty() {
                        return None;
                    }
                    bindings.push((field.clone(), value.into_owned()));
                }
            }
        }
        Some(bindings)
    }

    /// The request fields the path names, in order.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Variable(v) => Some(v.as_str()),
            Segment::Literal(_) => None,
        })
    }

    pub fn server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }
}

fn parse_template(template: &str) -> anyhow::Result<(Vec<Segment>, Option<String>)> {
    let rest = template.strip_prefix('/').ok_or_else(|| anyhow::anyhow!("{template}: must start with /"))?;
    let (rest, custom_verb) = match rest.rsplit_once(':') {
        // A `:` inside the last `{...}` would be a variable's pattern, which we do not use.
        Some((head, verb)) if !verb.contains(['/', '}']) => (head, Some(verb.to_string())),
        _ => (rest, None),
    };
    let segments = rest
        .split('/')
        .map(|s| match s.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
            Some(v) if !v.contains('=') && !v.is_empty() => Ok(Segment::Variable(v.to_string())),
            Some(_) => Err(anyhow::anyhow!("{template}: only `{{field}}` variables are supported")),
            None if !s.is_empty() && !s.contains(['{', '}', '*']) => Ok(Segment::Literal(s.to_string())),
            None => Err(anyhow::anyhow!("{template}: bad segment `{s}`")),
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((segments, custom_verb))
}

/// The field a dot-separated path names, through singular message fields.
pub fn field_path(message: &prost_reflect::MessageDescriptor, path: &str) -> Option<prost_reflect::FieldDescriptor> {
    let mut message = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let field = message.get_field_by_name(name)?;
        if parts.peek().is_none() {
            return Some(field);
        }
        match field.kind() {
            prost_reflect::Kind::Message(m) if !field.is_list() && !field.is_map() => message = m,
            _ => return None,
        }
    }
    None
}

/// Our protos and the `google.rpc` error details, for JSON in and out.
pub fn pool() -> DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        let mut pool =
            DescriptorPool::decode(coursewire_proto::FILE_DESCRIPTOR_SET).expect("our descriptor set decodes");
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .expect("the google.rpc descriptors decode");
        pool
    });
    POOL.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_into_literals_variables_and_a_verb() {
        let (segments, verb) = parse_template("/v1/enrollments/{id}:complete").unwrap();
        assert_eq!(
            segments,
            [Segment::Literal("v1".into()), Segment::Literal("enrollments".into()), Segment::Variable("id".into())]
        );
        assert_eq!(verb.as_deref(), Some("complete"));
        assert!(parse_template("/v1/{name=users/*}").is_err());
        assert!(parse_template("v1/users").is_err());
    }

    #[test]
    fn every_rule_in_our_protos_parses_and_paths_match_one_route() {
        let routes = Routes::from_pool(&super::pool()).unwrap();
        let find = |verb: http::Method, path: &str| match routes.find(&verb, path) {
            Matched::Route(r, b) => Some((r.grpc_path.clone(), b)),
            _ => None,
        };
        assert_eq!(
            find(http::Method::POST, "/v1/enrollments/enr_1:complete"),
            Some(("/coursewire.v1.EnrollmentService/CompleteEnrollment".into(), vec![("id".into(), "enr_1".into())]))
        );
        assert_eq!(
            find(http::Method::GET, "/v1/enrollments:export").unwrap().0,
            "/coursewire.v1.EnrollmentService/ExportEnrollments"
        );
        assert_eq!(
            find(http::Method::GET, "/v1/enrollments").unwrap().0,
            "/coursewire.v1.EnrollmentService/ListEnrollments"
        );
        assert_eq!(
            find(http::Method::PATCH, "/v1/users/usr%201").unwrap().1,
            vec![("user.id".to_string(), "usr 1".to_string())]
        );
        assert!(find(http::Method::GET, "/v1/users/").is_none());
        assert!(matches!(routes.find(&http::Method::PUT, "/v1/users/u1"), Matched::WrongVerb(v) if v.len() == 3));
        // A custom method's path is its own: never a Get, Update or Delete of `enr_1:complete`.
        let verbs = |verb: http::Method, path: &str| match routes.find(&verb, path) {
            Matched::WrongVerb(v) => v,
            _ => vec![],
        };
        assert_eq!(verbs(http::Method::GET, "/v1/enrollments/enr_1:complete"), [http::Method::POST]);
        assert_eq!(verbs(http::Method::OPTIONS, "/v1/apiKeys/key_1:revoke"), [http::Method::POST]);
        assert!(matches!(routes.find(&http::Method::GET, "/v1/enrollments/enr_1:nonsense"), Matched::None));
        assert_eq!(
            find(http::Method::GET, "/v1/enrollments/enr%3A1").unwrap().1,
            vec![("id".to_string(), "enr:1".to_string())],
            "an encoded colon is part of the id"
        );
    }

    #[test]
    fn every_path_template_answers_each_verb_once() {
        let routes = Routes::from_pool(&super::pool()).unwrap();
        let mut seen = std::collections::HashSet::new();
        for route in routes.iter() {
            // Variables' names do not tell paths apart: `/v1/users/{id}` is `/v1/users/{user.id}`.
            let shape: Vec<&str> = route
                .segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => l.as_str(),
                    Segment::Variable(_) => "*",
                })
                .collect();
            let key = (route.verb.clone(), shape, route.custom_verb.clone());
            assert!(seen.insert(key), "two routes for {} {}", route.verb, route.template);
        }
    }
}
