//! What `run` prints at its end: the `summary.txt` of every committed entry that has one
//! (report and analysis stages write it), with the paths of the entry's Markdown files.
use super::record::TraceRow;
use crate::cache::store::list_files;
use crate::cache::Cache;
use crate::graph::Graph;
use crate::stages::SUMMARY_FILE;
use std::collections::HashMap;
use std::path::PathBuf;

/// One entry's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct EntrySummary {
    /// The instance whose entry it is.
    pub instance: String,
    /// The committed entry directory.
    pub dir: PathBuf,
    /// Content of its `summary.txt`.
    pub text: String,
    /// Its `.md` files (full paths, sorted; `report.md` first when present).
    pub markdown: Vec<PathBuf>,
}

/// Summaries of the instances that ended `ran` or `cached` in `trace`, in graph order.
pub fn entry_summaries(graph: &Graph, cache: &Cache, trace: &[TraceRow]) -> Vec<EntrySummary> {
    let keys: HashMap<&str, &str> = trace
        .iter()
        .filter(|t| (t.status == "ran" || t.status == "cached") && !t.key.is_empty())
        .map(|t| (t.instance.as_str(), t.key.as_str()))
        .collect();
    let mut out = Vec::new();
    for &i in &graph.order {
        let id = graph.instances[i].id.as_str();
        let Some(key) = keys.get(id) else { continue };
        let dir = cache.entry_dir(key);
        let Ok(text) = std::fs::read_to_string(dir.join(SUMMARY_FILE)) else {
            continue;
        };
        let mut md: Vec<String> = list_files(&dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f.ends_with(".md"))
            .collect();
        md.sort_by_key(|f| (f != "report.md", f.clone()));
        out.push(EntrySummary {
            instance: id.to_string(),
            markdown: md.iter().map(|f| dir.join(f)).collect(),
            dir,
            text,
        });
    }
    out
}

/// The text `run` prints for the summaries (empty when there are none).
pub fn render(summaries: &[EntrySummary]) -> String {
    let mut s = String::new();
    for e in summaries {
        s.push_str(&format!("\n== {} ({})\n", e.instance, e.dir.display()));
        s.push_str(e.text.trim_end());
        s.push('\n');
        for m in &e.markdown {
            s.push_str(&format!("report: {}\n", m.display()));
        }
    }
    s
}
