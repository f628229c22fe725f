//! The benchmark scenarios of `nebula-bench`, each ending with one JSON line of figures.

pub mod agent_log;
pub mod auth_backends;
pub mod broker;
pub mod dead_link;
pub mod fanout;
pub mod fleet_setup;
pub mod footprint;
pub mod rest;
pub mod stats;
pub mod sync_storm;

/// Command-line options shared by the scenarios: `--name value` pairs.
#[derive(Debug, Clone, Default)]
pub struct Options(std::collections::BTreeMap<String, String>);

impl Options {
    pub fn parse(arguments: &[String]) -> anyhow::Result<Self> {
        let mut options = std::collections::BTreeMap::new();
        let mut iterator = arguments.iter();
        while let Some(argument) = iterator.next() {
            let Some(name) = argument.strip_prefix("--") else {
                anyhow::bail!("unexpected argument {argument:?}");
            };
            let value = iterator
                .next()
                .ok_or_else(|| anyhow::anyhow!("--{name} needs a value"))?;
            options.insert(name.to_string(), value.clone());
        }
        Ok(Self(options))
    }

    /// A numeric option, or its default.
    pub fn number(&self, name: &str, default: u64) -> anyhow::Result<u64> {
        match self.0.get(name) {
            Some(value) => value
                .parse()
                .map_err(|_| anyhow::anyhow!("--{name} must be a whole number, got {value:?}")),
            None => Ok(default),
        }
    }

    /// A numeric option, if given.
    pub fn optional_number(&self, name: &str) -> anyhow::Result<Option<u64>> {
        self.0
            .get(name)
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--{name} must be a whole number, got {value:?}"))
            })
            .transpose()
    }

    pub fn text(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }
}
