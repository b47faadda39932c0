//! A Markdown report file assembled from headings, paragraphs, tables and images linked by
//! paths relative to the report file.
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Component, Path};

/// A Markdown document under construction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MarkdownReport {
    body: String,
}

impl MarkdownReport {
    /// A report starting with `# title`.
    pub fn new(title: &str) -> Self {
        MarkdownReport {
            body: format!("# {title}\n\n"),
        }
    }

    /// A heading of `level` (2..=6; clamped).
    pub fn heading(&mut self, level: usize, text: &str) -> &mut Self {
        let _ = writeln!(self.body, "{} {text}\n", "#".repeat(level.clamp(2, 6)));
        self
    }

    /// A paragraph.
    pub fn paragraph(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.body, "{}\n", text.trim_end());
        self
    }

    /// Already formatted Markdown (e.g. a table from `to_markdown`).
    pub fn raw(&mut self, md: &str) -> &mut Self {
        let _ = writeln!(self.body, "{}\n", md.trim_end());
        self
    }

    /// A fenced code block (e.g. the terminal summary).
    pub fn code(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.body, "```text\n{}\n```\n", text.trim_end());
        self
    }

    /// An image `![alt](rel)`; `rel` must be a relative path inside the report's folder
    /// (no absolute path, no `..`), written with `/` separators.
    pub fn image(&mut self, alt: &str, rel: &Path) -> Result<&mut Self> {
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => parts.push(
                    p.to_str()
                        .with_context(|| format!("image path {} is not UTF-8", rel.display()))?
                        .to_string(),
                ),
                Component::CurDir => {}
                _ => bail!(
                    "image link {} must be relative to the report folder, without `..`",
                    rel.display()
                ),
            }
        }
        if parts.is_empty() {
            bail!("image link is empty");
        }
        let link = parts.join("/").replace(' ', "%20");
        let _ = writeln!(self.body, "![{}]({link})\n", alt.replace(']', ""));
        Ok(self)
    }

    /// The Markdown text.
    pub fn as_str(&self) -> &str {
        &self.body
    }

    /// Write to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.body).with_context(|| format!("cannot write {}", path.display()))
    }
}
