//! The DAG of stage instances: upstream matching across matrices, topological
//! order (file order among ready instances), and rendering for `idat-pipe dag`.
use crate::config::{Instance, Loaded};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Dfs;
use petgraph::Direction;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Instances with their upstream edges.
#[derive(Debug, Clone)]
pub struct Graph {
    /// The pipeline's instances in load order ([`Loaded::instances`]): instance `i` of
    /// `deps`, `order` and `dag` is `instances[i]`.
    pub instances: Vec<Instance>,
    /// For each instance: (need stage, upstream instance index), in `needs` order.
    pub deps: Vec<Vec<(String, usize)>>,
    /// Instance indices, every instance after all of its upstreams.
    pub order: Vec<usize>,
    /// The same DAG as a petgraph graph: node `i` is instance `i`, edges point from an
    /// upstream to its downstream and carry the need's stage id.
    pub dag: DiGraph<(), String>,
}

/// Topological order that prefers file order (smallest ready index first), so that
/// independent instances start in the order the file lists them (Kahn's algorithm with a
/// min-heap; petgraph's `toposort` has no such preference). Stage cycles are rejected
/// when loading; any instance left over (impossible) is appended in file order.
fn kahn_in_file_order(dag: &DiGraph<(), String>) -> Vec<usize> {
    let n = dag.node_count();
    let mut indeg: Vec<usize> = dag
        .node_indices()
        .map(|i| dag.neighbors_directed(i, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        placed[i] = true;
        for b in dag.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
            let b = b.index();
            indeg[b] -= 1;
            if indeg[b] == 0 {
                ready.push(Reverse(b));
            }
        }
    }
    order.extend((0..n).filter(|&i| !placed[i]));
    order
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
        let edges: usize = deps.iter().map(Vec::len).sum();
        let mut dag = DiGraph::with_capacity(instances.len(), edges);
        for _ in &instances {
            dag.add_node(());
        }
        for (b, ds) in deps.iter().enumerate() {
            for (need, u) in ds {
                dag.add_edge(NodeIndex::new(*u), NodeIndex::new(b), need.clone());
            }
        }
        debug_assert!(!petgraph::algo::is_cyclic_directed(&dag));
        let order = kahn_in_file_order(&dag);
        Graph {
            instances,
            deps,
            order,
            dag,
        }
    }

    /// Every instance downstream of (and including) those in `roots`.
    pub fn descendants(&self, roots: &[usize]) -> Vec<bool> {
        let mut mark = vec![false; self.instances.len()];
        let mut dfs = Dfs::empty(&self.dag);
        for &r in roots {
            dfs.move_to(NodeIndex::new(r));
            while let Some(n) = dfs.next(&self.dag) {
                mark[n.index()] = true;
            }
        }
        mark
    }

    /// `--force STAGE...`: the instances of these stages. What is downstream of them is not
    /// forced: the scheduler looks it up again once they are recomputed, with the keys their
    /// new content gives, so it reruns only when that content changed (early cutoff; to
    /// recompute a downstream stage too, name it as well).
    ///
    /// # Errors
    /// A name that is not a stage of `loaded`, with the stages there are.
    pub fn forced(&self, loaded: &Loaded, force: &[String]) -> Result<Vec<bool>, String> {
        for s in force {
            if !loaded.stages.iter().any(|(id, _)| id == s) {
                let ids: Vec<&str> = loaded.stages.iter().map(|(i, _)| i.as_str()).collect();
                return Err(format!(
                    "--force {s}: no such stage (stages: {})",
                    ids.join(", ")
                ));
            }
        }
        Ok(self
            .instances
            .iter()
            .map(|inst| force.contains(&inst.stage))
            .collect())
    }

    /// Every instance upstream of (and including) those in `targets`: what must be
    /// committed before they can run.
    pub fn ancestors(&self, targets: &[usize]) -> Vec<bool> {
        let reversed = petgraph::visit::Reversed(&self.dag);
        let mut mark = vec![false; self.instances.len()];
        let mut dfs = Dfs::empty(reversed);
        for &t in targets {
            dfs.move_to(NodeIndex::new(t));
            while let Some(n) = dfs.next(reversed) {
                mark[n.index()] = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::Registry;

    #[test]
    fn matrix_matching_and_order() {
        // No kinds are needed to build a graph: load_str reports unknown kinds, so build
        // the Loaded by hand from a pipeline that uses none.
        let text = "version: 1\nname: g\nstages: {}\n";
        let mut l = crate::config::load_str("g.yaml", text, &[], &Registry::empty()).unwrap();
        let spec = |needs: &[&str]| crate::config::StageSpec {
            uses: "k".into(),
            with: serde_json::Value::Null,
            needs: needs.iter().map(|s| s.to_string()).collect(),
            matrix: Default::default(),
            resources: Default::default(),
        };
        let inst = |stage: &str, cell: &[(&str, i64)]| {
            let cell: Vec<(String, serde_json::Value)> = cell
                .iter()
                .map(|(a, v)| (a.to_string(), (*v).into()))
                .collect();
            crate::config::Instance {
                id: crate::config::instance_id(stage, &cell),
                stage: stage.into(),
                uses: "k".into(),
                cell,
                with: serde_json::Value::Null,
                resources: Default::default(),
            }
        };
        l.stages = vec![
            ("b".into(), spec(&["a"])),
            ("a".into(), spec(&[])),
            ("c".into(), spec(&["b"])),
        ];
        l.instances = vec![
            inst("b", &[("t", 1), ("s", 1)]),
            inst("b", &[("t", 2), ("s", 1)]),
            inst("a", &[("t", 1)]),
            inst("a", &[("t", 2)]),
            inst("c", &[]),
        ];
        let g = Graph::build(&l);
        assert_eq!(g.deps[0], vec![("a".to_string(), 2)]);
        assert_eq!(g.deps[1], vec![("a".to_string(), 3)]);
        assert_eq!(g.deps[4].len(), 2, "no shared axis: fan-in");
        assert_eq!(g.order, vec![2, 0, 3, 1, 4]);
        assert_eq!(g.descendants(&[3]), vec![false, true, false, true, true]);
    }
}
