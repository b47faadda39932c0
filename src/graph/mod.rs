//! The DAG of stage instances: upstream matching across matrices, topological
//! order (petgraph), and rendering for `idat-pipe dag`.
use crate::config::{Instance, Loaded};
use petgraph::graph::DiGraph;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Instances with their upstream edges.
#[derive(Debug, Clone)]
pub struct Graph {
    pub instances: Vec<Instance>,
    /// For each instance: (need stage, upstream instance index), in `needs` order.
    pub deps: Vec<Vec<(String, usize)>>,
    /// Instance indices, every instance after all of its upstreams.
    pub order: Vec<usize>,
}

impl Graph {
    /// Build the instance graph. An instance of B that needs A depends on every
    /// instance of A whose matrix values agree with B's on the axes both share
    /// (no shared axis: all of A's instances).
    pub fn build(loaded: &Loaded) -> Graph {
        let instances = loaded.instances.clone();
        let mut by_stage: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, inst) in instances.iter().enumerate() {
            by_stage.entry(inst.stage.as_str()).or_default().push(i);
        }
        let axes = |stage: &str| -> Vec<String> {
            by_stage
                .get(stage)
                .and_then(|v| v.first())
                .map(|&i| instances[i].cell.iter().map(|(a, _)| a.clone()).collect())
                .unwrap_or_default()
        };
        let mut deps = vec![Vec::new(); instances.len()];
        for (sid, spec) in &loaded.stages {
            let mine = axes(sid);
            for need in &spec.needs {
                let theirs = axes(need);
                let shared: Vec<&String> = mine.iter().filter(|a| theirs.contains(a)).collect();
                let sig = |inst: &Instance| -> String {
                    shared
                        .iter()
                        .map(|a| {
                            inst.cell
                                .iter()
                                .find(|(x, _)| x == *a)
                                .map(|(_, v)| v.to_string())
                                .unwrap_or_default()
                        })
                        .collect::<Vec<_>>()
                        .join("\u{1f}")
                };
                let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
                for &u in by_stage
                    .get(need.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    groups.entry(sig(&instances[u])).or_default().push(u);
                }
                for &b in by_stage
                    .get(sid.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    if let Some(us) = groups.get(&sig(&instances[b])) {
                        deps[b].extend(us.iter().map(|&u| (need.clone(), u)));
                    }
                }
            }
        }
        let mut g = DiGraph::<usize, ()>::with_capacity(instances.len(), 0);
        let nodes: Vec<_> = (0..instances.len()).map(|i| g.add_node(i)).collect();
        for (b, ds) in deps.iter().enumerate() {
            for (_, u) in ds {
                g.add_edge(nodes[*u], nodes[b], ());
            }
        }
        // Stage cycles are rejected when loading, so this cannot fail; fall back to file order.
        let order = petgraph::algo::toposort(&g, None)
            .map(|v| v.into_iter().map(|n| g[n]).collect())
            .unwrap_or_else(|_| (0..instances.len()).collect());
        Graph {
            instances,
            deps,
            order,
        }
    }

    /// Every instance downstream of (and including) those in `roots`.
    pub fn descendants(&self, roots: &[usize]) -> Vec<bool> {
        let mut down: Vec<Vec<usize>> = vec![Vec::new(); self.instances.len()];
        for (b, ds) in self.deps.iter().enumerate() {
            for (_, u) in ds {
                down[*u].push(b);
            }
        }
        let mut mark = vec![false; self.instances.len()];
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(i) = stack.pop() {
            if !mark[i] {
                mark[i] = true;
                stack.extend(&down[i]);
            }
        }
        mark
    }

    /// Mermaid flowchart of the instances.
    pub fn mermaid(&self) -> String {
        let mut s = String::from("flowchart LR\n");
        for (i, inst) in self.instances.iter().enumerate() {
            let _ = writeln!(s, "  n{i}[\"{}\"]", inst.id.replace('"', "#quot;"));
        }
        for (b, ds) in self.deps.iter().enumerate() {
            for (_, u) in ds {
                let _ = writeln!(s, "  n{u} --> n{b}");
            }
        }
        s
    }

    /// Graphviz dot of the instances.
    pub fn dot(&self) -> String {
        let mut s = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box];\n");
        for (i, inst) in self.instances.iter().enumerate() {
            let label = inst.id.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(s, "  n{i} [label=\"{label}\"];");
        }
        for (b, ds) in self.deps.iter().enumerate() {
            for (_, u) in ds {
                let _ = writeln!(s, "  n{u} -> n{b};");
            }
        }
        s.push_str("}\n");
        s
    }
}
