//! What the CLI prints on stdout: the API's JSON document as JSON or YAML, or a table for a
//! person. JSON and YAML are the documents exactly as the control plane answered them, so
//! scripts can rely on the keys of `shared/API.md`.

use serde_json::Value;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Aligned columns for a person
    #[default]
    Table,
    /// The API's JSON document, pretty-printed
    Json,
    /// The API's document as YAML
    Yaml,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "table" => Ok(Self::Table),
            "json" => Ok(Self::Json),
            "yaml" => Ok(Self::Yaml),
            other => Err(format!(
                "unknown output format {other:?} (table, json or yaml)"
            )),
        }
    }
}

/// Rows with a header line, printed with aligned columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(ToString::to_string).collect(),
            rows: Vec::new(),
        }
    }

    /// A line of text without a header, for answers that carry no document (`{}` of a delete).
    pub fn message(text: String) -> Self {
        Self {
            header: Vec::new(),
            rows: vec![vec![text]],
        }
    }

    pub fn row(mut self, cells: Vec<String>) -> Self {
        self.rows.push(cells);
        self
    }

    /// One row per name of a list answer (`{"apps": [..]}`).
    pub fn names(header: &str, names: &Value) -> Self {
        let mut table = Self::new(&[header]);
        for name in names.as_array().into_iter().flatten() {
            table.rows.push(vec![cell(name)]);
        }
        table
    }

    /// A document as FIELD / VALUE rows: its name first, then the other keys in order.
    pub fn fields(document: &Value) -> Self {
        const NAME_KEYS: [&str; 5] = [
            "app_name",
            "device_group",
            "cron_job_name",
            "user_name",
            "user_group",
        ];
        let mut table = Self::new(&["FIELD", "VALUE"]);
        if let Some(map) = document.as_object() {
            let names = map
                .iter()
                .filter(|(key, _)| NAME_KEYS.contains(&key.as_str()));
            let others = map
                .iter()
                .filter(|(key, _)| !NAME_KEYS.contains(&key.as_str()));
            for (key, value) in names.chain(others) {
                table.rows.push(vec![key.clone(), cell(value)]);
            }
        }
        table
    }

    fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        // A one-cell row of a wider table is a note (`(more: --after …)`): it is printed as
        // it is and does not widen the first column.
        let aligned = std::iter::once(&self.header)
            .chain(&self.rows)
            .filter(|row| columns < 2 || row.len() > 1);
        for row in aligned {
            for (index, text) in row.iter().enumerate() {
                widths[index] = widths[index].max(text.chars().count());
            }
        }
        let header = (!self.header.is_empty()).then_some(&self.header);
        for row in header.into_iter().chain(&self.rows) {
            let mut line = String::new();
            for (index, text) in row.iter().enumerate().take(columns) {
                if index + 1 == columns {
                    line.push_str(text);
                } else {
                    line.push_str(&format!("{text:<width$}  ", width = widths[index]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// One value in one table cell: strings bare, lists comma-separated, maps as `k=v`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        Value::Array(items) if items.is_empty() => "-".to_string(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(map) if map.is_empty() => "-".to_string(),
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| format!("{key}={}", cell(value)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Prints `document` in `format`; `table` is only built when a table is asked for.
pub fn print(
    out: &mut dyn Write,
    format: OutputFormat,
    document: &Value,
    table: impl FnOnce(&Value) -> Table,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Table => table(document).write(out),
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, document)?;
            writeln!(out)
        }
        OutputFormat::Yaml => {
            let text = serde_yaml_ng::to_string(document).map_err(std::io::Error::other)?;
            out.write_all(text.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(format: OutputFormat, document: &Value) -> String {
        let mut out = Vec::new();
        print(&mut out, format, document, Table::fields).expect("print");
        String::from_utf8(out).expect("utf-8")
    }

    fn app() -> Value {
        json!({
            "app_name": "web", "app_id": 3, "docker_image": "nginx:1",
            "starting_ports": [{"8081": "80"}, 9000], "containers_per": {"server": 2},
            "env_vars": {"A": "1", "B": "two words"}, "running": true, "networks": [],
            "privileged": false, "label": null
        })
    }

    #[test]
    fn json_is_the_document_unchanged() {
        let text = render(OutputFormat::Json, &app());
        let parsed: Value = serde_json::from_str(&text).expect("valid json");
        assert_eq!(parsed, app());
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn yaml_is_the_document_unchanged() {
        let text = render(OutputFormat::Yaml, &app());
        let parsed: Value = serde_yaml_ng::from_str(&text).expect("valid yaml");
        assert_eq!(parsed, app());
        // Keys that look like numbers stay strings: the host port of a port mapping.
        assert!(text.contains("'8081': '80'"), "{text}");
        assert!(text.contains("app_name: web\n"), "{text}");
    }

    #[test]
    fn table_of_fields_is_aligned() {
        let text = render(OutputFormat::Table, &app());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "FIELD           VALUE");
        assert_eq!(lines[1], "app_name        web");
        assert!(lines.contains(&"starting_ports  8081=80, 9000"), "{text}");
        assert!(
            lines.contains(&"env_vars        A=1, B=two words"),
            "{text}"
        );
        assert!(lines.contains(&"networks        -"), "{text}");
        assert!(lines.contains(&"label           -"), "{text}");
        assert!(lines.contains(&"privileged      false"), "{text}");
    }

    #[test]
    fn table_of_names_has_one_row_per_name() {
        let mut out = Vec::new();
        print(
            &mut out,
            OutputFormat::Table,
            &json!({"apps": ["a", "bb"]}),
            |document| Table::names("APP", &document["apps"]),
        )
        .expect("print");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "APP\na\nbb\n");
    }

    #[test]
    fn a_note_row_does_not_widen_the_first_column() {
        let table = Table::new(&["A", "B"])
            .row(vec!["x".into(), "y".into()])
            .row(vec!["(more: --after x)".into()]);
        let mut out = Vec::new();
        table.write(&mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "A  B\nx  y\n(more: --after x)\n"
        );
    }

    #[test]
    fn a_message_has_no_header() {
        let mut out = Vec::new();
        print(&mut out, OutputFormat::Table, &json!({}), |_| {
            Table::message("deleted app web".into())
        })
        .expect("print");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "deleted app web\n");
    }

    #[test]
    fn output_format_names() {
        assert_eq!("yaml".parse(), Ok(OutputFormat::Yaml));
        assert!("xml".parse::<OutputFormat>().is_err());
    }
}
