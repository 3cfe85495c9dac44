//! The parts of a Spin manifest (`spin.toml`, manifest version 2) the test host honours: the
//! application variables (defaults, `required`), the HTTP routes, and per component its source,
//! its variables (templates over the application variables) and `allowed_outbound_hosts`
//! (templates too). Values come like Spin's environment provider gives them: variable `name`
//! from `SPIN_VARIABLE_NAME`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Deserialize)]
struct RawManifest {
    spin_manifest_version: u32,
    #[serde(default)]
    variables: HashMap<String, RawVariable>,
    trigger: RawTriggers,
    component: HashMap<String, RawComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
}

#[derive(Deserialize)]
struct RawTriggers {
    http: Vec<RawRoute>,
}

#[derive(Deserialize)]
struct RawRoute {
    route: String,
    component: String,
}

#[derive(Deserialize)]
struct RawComponent {
    source: String,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    variables: HashMap<String, String>,
}

/// A host a component may call: scheme, host and port (the scheme's default when not written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    /// `http`, `https` or `postgres`.
    pub scheme: String,
    /// The host name or address.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// The default port of a scheme the host knows.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "postgres" => Some(5432),
        _ => None,
    }
}

impl AllowedHost {
    /// Parses `scheme://host[:port]` (no path, no user).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = text
            .split_once("://")
            .with_context(|| format!("`{text}` is not scheme://host[:port]"))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '@', '?']) {
            bail!("`{text}` must be scheme://host[:port], without user, path or query");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().context("the port is not a number")?),
            None => (
                rest,
                default_port(scheme).with_context(|| format!("`{text}` needs a port"))?,
            ),
        };
        Ok(Self {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    /// Whether a call to `scheme://host:port` is this one.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let port = port.or_else(|| default_port(scheme));
        self.scheme == scheme && self.host.eq_ignore_ascii_case(host) && Some(self.port) == port
    }
}

/// A component as the host runs it.
#[derive(Clone, Debug)]
pub struct ComponentConfig {
    /// The `.wasm` file.
    pub source: PathBuf,
    /// Its variables, resolved.
    pub variables: HashMap<String, String>,
    /// Where it may connect.
    pub allowed_hosts: Vec<AllowedHost>,
}

/// A route pattern: literal segments, `:name` for one segment, a trailing `...` for the rest.
#[derive(Clone, Debug)]
struct Route {
    segments: Vec<String>,
    wildcard: bool,
    component: String,
}

impl Route {
    fn parse(pattern: &str, component: String) -> Self {
        let mut segments: Vec<String> = pattern
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let wildcard = segments.last().is_some_and(|s| s == "...");
        if wildcard {
            segments.pop();
        }
        Self {
            segments,
            wildcard,
            component,
        }
    }

    /// How specific a match of `path` is (more literal segments win), if it matches.
    fn matches(&self, path: &str) -> Option<usize> {
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        if parts.len() < self.segments.len()
            || (!self.wildcard && parts.len() != self.segments.len())
        {
            return None;
        }
        let mut literal = 0;
        for (segment, part) in self.segments.iter().zip(&parts) {
            if segment.starts_with(':') {
                continue;
            }
            if segment != part {
                return None;
            }
            literal += 1;
        }
        Some(literal * 2 + usize::from(!self.wildcard))
    }
}

/// A parsed and resolved manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    routes: Vec<Route>,
    /// The components by name.
    pub components: HashMap<String, ComponentConfig>,
}

/// Replaces every `{{ name }}` in `template` with the application variable's value.
fn expand(template: &str, values: &HashMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .with_context(|| format!("unclosed template in `{template}`"))?;
        let name = rest[start + 2..start + end].trim();
        let value = values
            .get(name)
            .with_context(|| format!("`{template}` names the undeclared variable `{name}`"))?;
        out.push_str(value);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Manifest {
    /// Reads `path`, taking variable values from `provided` (by lowercase name, as Spin's
    /// environment provider maps `SPIN_VARIABLE_NAME`); a required variable not provided is an
    /// error, as it is for `spin up`.
    pub fn load(path: &Path, provided: &HashMap<String, String>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let raw: RawManifest =
            toml::from_str(&text).with_context(|| format!("{} does not parse", path.display()))?;
        if raw.spin_manifest_version != 2 {
            bail!("only spin_manifest_version 2 is supported");
        }
        let mut values = HashMap::new();
        for (name, variable) in &raw.variables {
            if variable.required && variable.default.is_some() {
                bail!("variable `{name}` is required and has a default: it can only be one");
            }
            if variable.secret && variable.default.is_some() {
                bail!("secret variable `{name}` must not have a default");
            }
            let value = match (provided.get(name), &variable.default) {
                (Some(value), _) => value.clone(),
                (None, Some(default)) => default.clone(),
                (None, None) => bail!(
                    "variable `{name}` is required: set SPIN_VARIABLE_{}",
                    name.to_uppercase()
                ),
            };
            values.insert(name.clone(), value);
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut components = HashMap::new();
        for (name, component) in raw.component {
            let variables = component
                .variables
                .iter()
                .map(|(key, template)| Ok((key.clone(), expand(template, &values)?)))
                .collect::<anyhow::Result<_>>()?;
            let allowed_hosts = component
                .allowed_outbound_hosts
                .iter()
                .map(|template| AllowedHost::parse(&expand(template, &values)?))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("allowed_outbound_hosts of `{name}`"))?;
            components.insert(
                name,
                ComponentConfig {
                    source: base.join(&component.source),
                    variables,
                    allowed_hosts,
                },
            );
        }
        let routes: Vec<Route> = raw
            .trigger
            .http
            .into_iter()
            .map(|r| Route::parse(&r.route, r.component))
            .collect();
        if let Some(route) = routes
            .iter()
            .find(|r| !components.contains_key(&r.component))
        {
            bail!("a route names the unknown component `{}`", route.component);
        }
        Ok(Self { routes, components })
    }

    /// The component serving `path`: the most specific matching route's.
    pub fn route(&self, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .filter_map(|r| r.matches(path).map(|score| (score, r)))
            .max_by_key(|(score, _)| *score)
            .map(|(_, r)| r.component.as_str())
    }
}
