//! How strong the models behind a report were: each backbone's accuracy on its own source
//! task (for backbones trained in the pipeline) and, for iDAT runs, the co-trained teacher's
//! downstream accuracy beside the student's. A student can only learn from a teacher that
//! knows something; these tables let a reader see whether it did.
//!
//! Accuracies are percentages in [0, 100].
use super::vtab::{markdown_table, text_table, MeanStd, TaskMeta};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A backbone the runs of a report used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backbone {
    /// Its role: `student` (the kept, larger model) or `teacher` (iDAT's small model).
    pub role: String,
    /// Where its weights came from, in words (the model entry's `source`).
    pub source: String,
    /// Test top-1 (%) on its source task, for backbones trained in the pipeline
    /// (`model/pretrain`); `None` for downloaded checkpoints.
    #[serde(default)]
    pub source_top1: Option<f64>,
}

/// The student's and the co-trained teacher's final-epoch test top-1 (%) of one iDAT run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherRun {
    /// Task name.
    pub task: String,
    /// Method label of the run, e.g. `idat-kl`.
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// The student's (kept model's) final-epoch top-1.
    pub student_top1: f64,
    /// The teacher's final-epoch top-1 on the same test split.
    pub teacher_top1: f64,
}

/// Backbones and teachers of a report; empty parts print nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStrength {
    /// Distinct backbones, in order of first appearance.
    pub backbones: Vec<Backbone>,
    /// One entry per iDAT run that recorded its teacher's accuracy.
    pub teachers: Vec<TeacherRun>,
}

impl ModelStrength {
    /// Add a backbone unless an equal one is already listed.
    pub fn add_backbone(&mut self, b: Backbone) {
        if !self.backbones.contains(&b) {
            self.backbones.push(b);
        }
    }

    /// Only the teacher runs of `method` (for a per-treatment sub-report).
    pub fn for_method(&self, method: &str) -> ModelStrength {
        ModelStrength {
            backbones: self.backbones.clone(),
            teachers: self
                .teachers
                .iter()
                .filter(|t| t.method == method)
                .cloned()
                .collect(),
        }
    }

    /// Header and rows of the backbone table: role, source, source top-1.
    pub fn backbone_grid(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let header = ["backbone", "trained on", "source-task test top-1 (%)"]
            .map(String::from)
            .to_vec();
        let rows = self
            .backbones
            .iter()
            .map(|b| {
                vec![
                    b.role.clone(),
                    b.source.clone(),
                    b.source_top1
                        .map_or("— (not trained here)".into(), |v| format!("{v:.2}")),
                ]
            })
            .collect();
        (header, rows)
    }

    /// Header and rows of the teacher table: per task (in `tasks` order) and iDAT method, the
    /// student's and the teacher's final-epoch top-1, mean ± std over seeds (n in brackets).
    pub fn teacher_grid(&self, tasks: &[TaskMeta]) -> (Vec<String>, Vec<Vec<String>>) {
        let header = [
            "task",
            "method",
            "student top-1 (n)",
            "teacher top-1 (n)",
            "teacher - student",
        ]
        .map(String::from)
        .to_vec();
        let mut methods: Vec<&str> = Vec::new();
        for t in &self.teachers {
            if !methods.contains(&t.method.as_str()) {
                methods.push(&t.method);
            }
        }
        let mut cells: BTreeMap<(&str, &str), Vec<&TeacherRun>> = BTreeMap::new();
        for t in &self.teachers {
            cells
                .entry((t.task.as_str(), t.method.as_str()))
                .or_default()
                .push(t);
        }
        let fmt = |m: MeanStd| format!("{} ({})", m.fmt(), m.n);
        let mut rows = Vec::new();
        for task in tasks {
            for m in &methods {
                let Some(runs) = cells.get(&(task.name.as_str(), *m)) else {
                    continue;
                };
                let s: Vec<f64> = runs.iter().map(|r| r.student_top1).collect();
                let t: Vec<f64> = runs.iter().map(|r| r.teacher_top1).collect();
                let d: Vec<f64> = runs
                    .iter()
                    .map(|r| r.teacher_top1 - r.student_top1)
                    .collect();
                rows.push(vec![
                    task.name.clone(),
                    m.to_string(),
                    MeanStd::of(&s).map_or_else(String::new, fmt),
                    MeanStd::of(&t).map_or_else(String::new, fmt),
                    MeanStd::of(&d).map_or_else(String::new, |m| m.fmt()),
                ]);
            }
        }
        (header, rows)
    }

    /// Plain text for stdout: the backbone table, then the teacher table; empty when there is
    /// nothing to show.
    pub fn to_terminal(&self, tasks: &[TaskMeta]) -> String {
        let mut s = String::new();
        if !self.backbones.is_empty() {
            let (h, r) = self.backbone_grid();
            s.push_str("Backbones\n");
            s.push_str(&text_table(&h, &r));
        }
        if !self.teachers.is_empty() {
            let (h, r) = self.teacher_grid(tasks);
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str("Teacher and student after iDAT co-training (final-epoch top-1 %, mean ± std over seeds)\n");
            s.push_str(&text_table(&h, &r));
        }
        s
    }

    /// Markdown: the same two tables with a sentence each; empty when there is nothing to show.
    pub fn to_markdown(&self, tasks: &[TaskMeta]) -> String {
        let mut s = String::new();
        if !self.backbones.is_empty() {
            let (h, r) = self.backbone_grid();
            s.push_str(
                "The backbones behind these runs and, for those trained in the pipeline, their \
                 test top-1 on their own source task.\n\n",
            );
            s.push_str(&markdown_table(&h, &r));
        }
        if !self.teachers.is_empty() {
            let (h, r) = self.teacher_grid(tasks);
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(
                "In iDAT the small teacher is co-trained with the student and discarded; its \
                 final-epoch test top-1 beside the student's shows how much it had to teach \
                 (mean ± std over seeds, n seeds in brackets).\n\n",
            );
            s.push_str(&markdown_table(&h, &r));
        }
        s
    }
}
