//! The configuration file: TOML with `${VAR}` interpolation, every error located.
//!
//! Loading goes in steps, each reporting `FILE:LINE:COL: message`:
//!
//! 1. `${VAR}` and `${VAR:-default}` are replaced from the environment (`$${` is a
//!    literal `${`). Substitution happens within a line, so line numbers stay true.
//! 2. The text is parsed as TOML, keeping every key's span.
//! 3. Each component table is read by the type its `type` key names, through the
//!    registry; serde reports the path of a bad value, which is mapped back to a span.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use outflow_pipeline::PipelineSettings;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml_edit::{ImDocument, Item, TableLike};

use crate::registry::{SinkSpec, SourceSpec};

/// Where the file checkpoint store keeps its files unless configured.
pub(crate) const DEFAULT_STATE_DIR: &str = ".outflow/state";

/// One problem in a configuration file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// All problems found in a file.
#[derive(Debug)]
pub(crate) struct ConfigErrors(pub(crate) Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The checkpoint store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum StateConfig {
    /// JSON files under a directory (the default).
    File {
        /// The directory; created when missing.
        #[serde(default = "default_state_dir")]
        dir: PathBuf,
    },
    /// A table in a Postgres database, shared by several hosts.
    Postgres {
        /// The database holding the table.
        url: String,
        /// The table, created when missing.
        #[serde(default = "default_state_table")]
        table: String,
    },
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_state_table() -> String {
    outflow_pipeline::POSTGRES_STORE_TABLE.to_string()
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig::File {
            dir: default_state_dir(),
        }
    }
}

/// The metrics and health listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsConfig {
    /// Address to serve `/metrics`, `/healthz` and `/readyz` on, e.g. `127.0.0.1:9090`.
    pub(crate) listen: SocketAddr,
}

/// One pipeline, read and validated.
#[derive(Debug)]
pub(crate) struct PipelineConfig {
    pub(crate) name: String,
    pub(crate) settings: PipelineSettings,
    pub(crate) source: SourceSpec,
    pub(crate) sink: SinkSpec,
}

/// A whole configuration.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) state: StateConfig,
    pub(crate) metrics: Option<MetricsConfig>,
    pub(crate) pipelines: Vec<PipelineConfig>,
}

/// Reads and validates a configuration file.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let raw = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&file, &raw, &|name| std::env::var(name).ok())
}

/// Parses configuration text; `env` looks up variables.
pub(crate) fn parse(
    file: &str,
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let text = interpolate(file, raw, env)?;
    let doc = ImDocument::parse(text.clone()).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = line_col(&text, offset);
        let message = e.message().trim().to_string();
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            column,
            message,
        }])
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let (line, column) = line_col(&text, e.span().map_or(0, |s| s.start));
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            column,
            message: e.message().to_string(),
        }])
    })?;
    let reader = Reader {
        file,
        text: &text,
        doc: &doc,
        errors: Vec::new(),
    };
    reader.read(table)
}

struct Reader<'a> {
    file: &'a str,
    text: &'a str,
    doc: &'a ImDocument<String>,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn read(mut self, mut table: toml::Table) -> Result<Config, ConfigErrors> {
        for key in table.keys() {
            if !["pipelines", "state", "metrics"].contains(&key.as_str()) {
                self.error(
                    &[key.as_str()],
                    format!("unknown key `{key}`; expected `pipelines`, `state` or `metrics`"),
                );
            }
        }
        let state = match table.remove("state") {
            Some(mut value) => {
                if let Some(state) = value.as_table_mut() {
                    state.entry("type").or_insert_with(|| "file".into());
                }
                self.component::<StateConfig>(&["state"], value)
                    .unwrap_or_default()
            }
            None => StateConfig::default(),
        };
        let metrics = table
            .remove("metrics")
            .and_then(|value| self.component::<MetricsConfig>(&["metrics"], value));
        let mut pipelines = Vec::new();
        match table.remove("pipelines") {
            None => self.error(
                &[],
                "no pipelines: add a [pipelines.<name>.source] table".into(),
            ),
            Some(toml::Value::Table(all)) => {
                if all.is_empty() {
                    self.error(
                        &["pipelines"],
                        "no pipelines: add a [pipelines.<name>.source] table".into(),
                    );
                }
                for (name, value) in all {
                    if let Some(p) = self.pipeline(&name, value) {
                        pipelines.push(p);
                    }
                }
            }
            Some(other) => self.error(
                &["pipelines"],
                format!("expected a table of pipelines, found {}", other.type_str()),
            ),
        }
        self.exclusive_streams(&pipelines);
        if self.errors.is_empty() {
            Ok(Config {
                state,
                metrics,
                pipelines,
            })
        } else {
            self.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(self.errors))
        }
    }

    /// Two pipelines cannot both be the only writer of one NATS stream: their publishes
    /// would break each other's order chain at run time.
    #[cfg(feature = "nats")]
    fn exclusive_streams(&mut self, pipelines: &[PipelineConfig]) {
        let mut owners: Vec<(&str, &str, &str)> = Vec::new();
        for p in pipelines {
            let SinkSpec::Nats(nats) = &p.sink else {
                continue;
            };
            let Some(stream) = nats.stream.as_deref().filter(|_| nats.is_exclusive()) else {
                continue;
            };
            match owners
                .iter()
                .find(|(url, s, _)| *url == nats.url && *s == stream)
            {
                Some((_, _, owner)) => self.error(
                    &["pipelines", &p.name, "sink", "stream"],
                    format!(
                        "pipelines.{}.sink.stream: pipelines {owner} and {} both write to NATS \
                         stream {stream:?}, which exclusive_stream reserves for one pipeline; \
                         give each pipeline a stream of its own, or set exclusive_stream = false \
                         in both",
                        p.name, p.name,
                    ),
                ),
                None => owners.push((&nats.url, stream, &p.name)),
            }
        }
    }

    #[cfg(not(feature = "nats"))]
    fn exclusive_streams(&mut self, _pipelines: &[PipelineConfig]) {}

    fn pipeline(&mut self, name: &str, value: toml::Value) -> Option<PipelineConfig> {
        let path = ["pipelines", name];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.error(
                &path,
                format!(
                    "pipeline name {name:?} may only contain letters, digits, '_' and '-' \
                     (it names files, slots and subjects)"
                ),
            );
            return None;
        }
        let toml::Value::Table(mut table) = value else {
            self.error(
                &path,
                format!("pipelines.{name} must be a table with source and sink"),
            );
            return None;
        };
        let source = match table.remove("source") {
            Some(value) => self.typed(&["pipelines", name, "source"], value, SourceSpec::parse),
            None => {
                self.error(
                    &path,
                    format!("pipeline {name} has no source: add [pipelines.{name}.source]"),
                );
                None
            }
        };
        let sink = match table.remove("sink") {
            Some(value) => self.typed(&["pipelines", name, "sink"], value, SinkSpec::parse),
            None => Some(SinkSpec::default()),
        };
        let settings = self.component::<PipelineSettings>(&path, toml::Value::Table(table));
        if let Some(settings) = &settings {
            if let Err(e) = settings.validate() {
                self.error(&path, format!("pipelines.{name}: {e}"));
            }
        }
        Some(PipelineConfig {
            name: name.to_string(),
            settings: settings?,
            source: source?,
            sink: sink?,
        })
    }

    /// Reads a component table whose `type` key selects its parser.
    fn typed<T>(
        &mut self,
        path: &[&str],
        value: toml::Value,
        parse: fn(&str, toml::Value) -> Result<T, TypedError>,
    ) -> Option<T> {
        let toml::Value::Table(mut table) = value else {
            self.error(
                path,
                format!("{} must be a table with a `type` key", path.join(".")),
            );
            return None;
        };
        let kind = match table.remove("type") {
            Some(toml::Value::String(kind)) => kind,
            Some(other) => {
                let mut p = path.to_vec();
                p.push("type");
                self.error(
                    &p,
                    format!("`type` must be a string, found {}", other.type_str()),
                );
                return None;
            }
            None => {
                self.error(path, format!("{} needs a `type` key", path.join(".")));
                return None;
            }
        };
        match parse(&kind, toml::Value::Table(table)) {
            Ok(spec) => Some(spec),
            Err(TypedError::UnknownType(message)) => {
                let mut p = path.to_vec();
                p.push("type");
                self.error(&p, message);
                None
            }
            Err(TypedError::Invalid {
                path: inner,
                message,
            }) => {
                self.invalid(path, &inner, &message);
                None
            }
        }
    }

    fn component<T: DeserializeOwned>(&mut self, path: &[&str], value: toml::Value) -> Option<T> {
        match deserialize::<T>(value) {
            Ok(v) => Some(v),
            Err(TypedError::Invalid {
                path: inner,
                message,
            }) => {
                self.invalid(path, &inner, &message);
                None
            }
            Err(TypedError::UnknownType(message)) => {
                self.error(path, message);
                None
            }
        }
    }

    /// A bad value at `inner` inside the table at `path`, reported with its full path.
    fn invalid(&mut self, path: &[&str], inner: &[String], message: &str) {
        let mut p: Vec<&str> = path.to_vec();
        p.extend(inner.iter().map(String::as_str));
        let shown = p.join(".");
        self.error(&p, format!("{shown}: {message}"));
    }

    fn error(&mut self, path: &[&str], message: String) {
        let offset = locate(self.doc, path);
        let (line, column) = line_col(self.text, offset);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message,
        });
    }
}

/// Why a component table could not be read.
#[derive(Debug)]
pub(crate) enum TypedError {
    /// `type` names nothing this binary has.
    UnknownType(String),
    /// A value is missing, unknown or of the wrong type; `path` is inside the table.
    Invalid { path: Vec<String>, message: String },
}

/// Deserializes a component's options, reporting the path of a bad value.
pub(crate) fn deserialize<T: DeserializeOwned>(value: toml::Value) -> Result<T, TypedError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let mut path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        let message = e.into_inner().message().trim().to_string();
        // Point at an unknown key itself, when serde's path stops at its table.
        if let Some(rest) = message.strip_prefix("unknown field `") {
            if let Some(end) = rest.find('`') {
                if path.last().map(String::as_str) != Some(&rest[..end]) {
                    path.push(rest[..end].to_string());
                }
            }
        }
        TypedError::Invalid { path, message }
    })
}

/// Deserializes a component's options, or explains the semantic error with its path.
pub(crate) fn options<T: DeserializeOwned>(
    value: toml::Value,
    validate: impl FnOnce(&T) -> Result<(), outflow_core::Error>,
) -> Result<T, TypedError> {
    let options = deserialize::<T>(value)?;
    validate(&options).map_err(|e| TypedError::Invalid {
        path: Vec::new(),
        message: e.to_string(),
    })?;
    Ok(options)
}

/// The byte offset of the deepest part of `path` that exists in the document.
fn locate(doc: &ImDocument<String>, path: &[&str]) -> usize {
    let mut best = 0;
    let mut current: Option<&dyn TableLike> = Some(doc.as_table());
    let mut current_item: Option<&Item> = None;
    for segment in path {
        if let Some(table) = current {
            let Some((key, item)) = table.get_key_value(segment) else {
                break;
            };
            if let Some(span) = key.span().or_else(|| item.span()) {
                best = span.start;
            }
            current_item = Some(item);
            current = item.as_table_like();
        } else if let Some(array) = current_item.and_then(Item::as_array) {
            let Some(value) = segment.parse::<usize>().ok().and_then(|i| array.get(i)) else {
                break;
            };
            if let Some(span) = value.span() {
                best = span.start;
            }
            current = value.as_inline_table().map(|t| t as &dyn TableLike);
            current_item = None;
        } else {
            break;
        }
    }
    best
}

/// One-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$${` stays a literal `${`.
fn interpolate(
    file: &str,
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigErrors> {
    let mut out = String::with_capacity(raw.len());
    let mut errors = Vec::new();
    let mut rest = raw;
    let mut consumed = 0;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let offset = consumed + at;
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            consumed = offset + 3;
            continue;
        }
        if !tail.starts_with("${") {
            out.push('$');
            rest = &tail[1..];
            consumed = offset + 1;
            continue;
        }
        let Some(end) = tail.find('}') else {
            let (line, column) = line_col(raw, offset);
            errors.push(ConfigError {
                file: file.to_string(),
                line,
                column,
                message: "unclosed `${`: write ${NAME} or ${NAME:-default}, or $${ for a literal"
                    .into(),
            });
            out.push_str(tail);
            rest = "";
            break;
        };
        let inner = &tail[2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let (line, column) = line_col(raw, offset);
        if !valid {
            errors.push(ConfigError {
                file: file.to_string(),
                line,
                column,
                message: format!(
                    "invalid variable name {name:?} in `${{{inner}}}`: use letters, digits and _"
                ),
            });
        } else {
            match (env(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => errors.push(ConfigError {
                    file: file.to_string(),
                    line,
                    column,
                    message: format!(
                        "environment variable {name} is not set; set it or write \
                         ${{{name}:-default}}"
                    ),
                }),
            }
        }
        rest = &tail[end + 1..];
        consumed = offset + end + 1;
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Builds a component table from flag values, for the one-pipeline commands.
pub(crate) fn table(entries: impl IntoIterator<Item = (&'static str, toml::Value)>) -> toml::Value {
    toml::Value::Table(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "NATS_URL" => Some("nats://10.0.0.1:4222".into()),
            "COUNT" => Some("25".into()),
            _ => None,
        }
    }

    fn errors(text: &str) -> Vec<String> {
        match parse("p.toml", text, &env) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const GOOD: &str = r#"
[state]
type = "file"
dir = "/var/lib/outflow"

[metrics]
listen = "127.0.0.1:9464"

[pipelines.orders]
window = 4
on_error = "dead_letter"
dead_letter = "dlq.{pipeline}.{aggregate_type}"
batch = { max_events = 100, linger = "20ms" }

[pipelines.orders.source]
type = "generate"
count = ${COUNT}
rate = ${RATE:-50.5}

[pipelines.orders.sink]
type = "file"
path = "/tmp/out-$${literal}.jsonl"
format = "cloudevents"

[pipelines.audit.source]
type = "generate"
"#;

    #[test]
    fn a_full_file_reads_with_defaults_and_variables() {
        let config = parse("p.toml", GOOD, &env).unwrap();
        assert_eq!(
            config.state,
            StateConfig::File {
                dir: "/var/lib/outflow".into()
            }
        );
        assert_eq!(config.metrics.unwrap().listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.pipelines.len(), 2);
        let audit = &config.pipelines[0];
        assert_eq!(audit.name, "audit");
        assert!(
            matches!(audit.sink, SinkSpec::Stdout(_)),
            "stdout is the default sink"
        );
        assert_eq!(audit.settings, PipelineSettings::default());
        let orders = &config.pipelines[1];
        assert_eq!(orders.settings.window, 4);
        assert_eq!(orders.settings.batch.max_events, 100);
        assert_eq!(
            orders.settings.batch.linger,
            std::time::Duration::from_millis(20)
        );
        assert_eq!(
            orders.settings.on_error,
            outflow_pipeline::OnError::DeadLetter
        );
        assert_eq!(
            orders.settings.dead_letter.as_str(),
            "dlq.{pipeline}.{aggregate_type}"
        );
        match &orders.source {
            SourceSpec::Generate(g) => {
                assert_eq!(g.count, Some(25));
                assert_eq!(g.rate, Some(50.5));
            }
            #[allow(unreachable_patterns)]
            other => panic!("wrong source {other:?}"),
        }
        match &orders.sink {
            SinkSpec::File(f) => {
                assert_eq!(f.path, PathBuf::from("/tmp/out-${literal}.jsonl"));
                assert_eq!(
                    f.format,
                    outflow_core::Format::CloudEvents { binary: false }
                );
            }
            other => panic!("wrong sink {other:?}"),
        }
    }

    #[test]
    fn missing_variable_is_named_with_its_place() {
        let text = "[pipelines.a.source]\ntype = \"generate\"\ncount = ${MISSING}\n";
        assert_eq!(
            errors(text),
            vec![
                "p.toml:3:9: environment variable MISSING is not set; set it or write \
                  ${MISSING:-default}"
            ]
        );
        assert_eq!(
            errors("x = \"${1BAD}\"\n"),
            vec!["p.toml:1:6: invalid variable name \"1BAD\" in `${1BAD}`: use letters, digits and _"]
        );
        assert_eq!(
            errors("x = \"${OPEN\"\n"),
            vec!["p.toml:1:6: unclosed `${`: write ${NAME} or ${NAME:-default}, or $${ for a literal"]
        );
    }

    #[test]
    fn syntax_errors_have_their_place() {
        let e = errors("[pipelines.a.source\ntype = \"generate\"\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("p.toml:1:20: invalid table header"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_keys_are_located_at_the_key() {
        let text = "[pipelines.a.source]\ntype = \"generate\"\n\n[pipelines.a.sink]\n\
                    type = \"file\"\npath = \"/tmp/x\"\n  bogus = 1\n\n[metricz]\n";
        assert_eq!(
            errors(text),
            vec![
                "p.toml:7:3: pipelines.a.sink.bogus: unknown field `bogus`, expected `path` or \
                 `format`",
                "p.toml:9:2: unknown key `metricz`; expected `pipelines`, `state` or `metrics`",
            ]
        );
        let text = "[pipelines.a]\nwindoww = 3\n[pipelines.a.source]\ntype = \"generate\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("p.toml:2:1: pipelines.a.windoww: unknown field `windoww`"),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_types_name_the_expected_value() {
        let text = "[pipelines.a.source]\ntype = \"generate\"\ncount = \"ten\"\n\
                    [pipelines.a.batch]\nlinger = \"5 parsecs\"\n";
        assert_eq!(
            errors(text),
            vec![
                "p.toml:3:1: pipelines.a.source.count: invalid type: string \"ten\", expected u64",
                "p.toml:5:1: pipelines.a.batch.linger: invalid duration unit \"parsecs\" in \
                 \"5 parsecs\"; use ms, s, m or h",
            ]
        );
        let text =
            "[metrics]\nlisten = \"everywhere\"\n[pipelines.a.source]\ntype = \"generate\"\n";
        assert_eq!(
            errors(text),
            vec!["p.toml:2:1: metrics.listen: invalid socket address syntax"]
        );
    }

    #[test]
    fn unknown_and_missing_types() {
        let text =
            "[pipelines.a.source]\ntype = \"oracle\"\n[pipelines.a.sink]\ntype = \"pigeon\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with(
                "p.toml:2:1: unknown source type `oracle`; expected one of `generate`"
            ),
            "{e:?}"
        );
        assert!(e[1].starts_with("p.toml:4:1: unknown sink type `pigeon`; expected one of `stdout`, `file`, `blackhole`"), "{e:?}");
        let e = errors("[pipelines.a.source]\ncount = 3\n");
        assert_eq!(
            e,
            vec!["p.toml:1:14: pipelines.a.source needs a `type` key"]
        );
        let e = errors("[pipelines.a]\nwindow = 2\n");
        assert_eq!(
            e,
            vec!["p.toml:1:12: pipeline a has no source: add [pipelines.a.source]"]
        );
        assert_eq!(
            errors(""),
            vec!["p.toml:1:1: no pipelines: add a [pipelines.<name>.source] table"]
        );
    }

    #[test]
    fn semantic_errors_name_the_setting() {
        let text =
            "[pipelines.a]\nwindow = 0\n[pipelines.a.source]\ntype = \"generate\"\nrate = -1.0\n";
        assert_eq!(
            errors(text),
            vec![
                "p.toml:1:12: pipelines.a: window must be at least 1",
                "p.toml:3:14: pipelines.a.source: rate must be a positive number of events per second",
            ]
        );
        let text = "[pipelines.\"a b\".source]\ntype = \"generate\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("pipeline name \"a b\" may only contain letters, digits"),
            "{e:?}"
        );
        let text = "[pipelines.a.source]\ntype = \"generate\"\n\
                    [pipelines.a.sink]\ntype = \"nats\"\nurl = \"nats://n:4222\"\nstream = \"S\"\n\
                    [pipelines.b.source]\ntype = \"generate\"\n\
                    [pipelines.b.sink]\ntype = \"nats\"\nurl = \"nats://n:4222\"\nstream = \"S\"\n";
        assert_eq!(
            errors(text),
            vec![
                "p.toml:12:1: pipelines.b.sink.stream: pipelines a and b both write to NATS \
                 stream \"S\", which exclusive_stream reserves for one pipeline; give each \
                 pipeline a stream of its own, or set exclusive_stream = false in both"
            ]
        );
        let shared = text.replace(
            "stream = \"S\"\n",
            "stream = \"S\"\nexclusive_stream = false\n",
        );
        assert!(parse("p.toml", &shared, &env).is_ok());
        let text = "[pipelines.a]\ndead_letter = \"dlq.{nope}\"\n[pipelines.a.source]\ntype = \"generate\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("p.toml:2:1: pipelines.a.dead_letter: unknown placeholder {nope}"),
            "{e:?}"
        );
    }
}
