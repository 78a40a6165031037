"""The per-VM purge flow: discover, guard, the reversible steps, the point of no return.

`purge_flow` is the flow factory TaskFlow saves in the journal and calls again on resume, so it is
a module-level function of JSON arguments: the same arguments always build the same flow.
"""

import networkx as nx
from taskflow.patterns import graph_flow

from novapurge.flows.naming import step_of
from novapurge.tasks.discovery import DiscoverInstance
from novapurge.tasks.guards import GuardInstance
from novapurge.tasks.mapping import QueueMappingForDelete
from novapurge.tasks.markers import NoteSkippedGroups, PassPointOfNoReturn
from novapurge.tasks.novadb import SoftDeleteInstance
from novapurge.tasks.placement import DeleteDbAllocations
from novapurge.tasks.quota import ReleaseQuotaUsage

# Beside the database chain (each may run in parallel with it once the guard passed).
SIDE_STEPS = (DeleteDbAllocations,)
# The database chain, in order.
DB_CHAIN = (SoftDeleteInstance, ReleaseQuotaUsage, QueueMappingForDelete)


def purge_flow(vm_uuid: str, options: dict) -> graph_flow.Flow:
    """One VM's purge. options: purge_id, force (bool), skip (list of step groups)."""
    purge_id, skip = options["purge_id"], set(options.get("skip") or ())
    flow = graph_flow.Flow(f"purge:{vm_uuid}")
    discover = DiscoverInstance(vm_uuid, purge_id)
    guard = GuardInstance(vm_uuid, purge_id, force=bool(options.get("force")))
    flow.add(discover, guard)
    last_reversible = [guard]
    if skip:
        note = NoteSkippedGroups(vm_uuid, purge_id, sorted(skip))
        flow.add(note)
        flow.link(guard, note)
        last_reversible.append(note)
    for step in SIDE_STEPS:
        if step.group not in skip:
            task = step(vm_uuid, purge_id)
            flow.add(task)
            flow.link(guard, task)
            last_reversible.append(task)
    previous = guard
    for step in DB_CHAIN:
        if step.group not in skip:
            task = step(vm_uuid, purge_id)
            flow.add(task)
            flow.link(previous, task)
            previous = task
    last_reversible.append(previous)
    point = PassPointOfNoReturn(vm_uuid, purge_id)
    flow.add(point)
    for task in set(last_reversible):
        flow.link(task, point)
    return flow


def step_graph(flow) -> nx.DiGraph:
    """The flow's steps and their ordering as a networkx graph (for `plan --graph`)."""
    graph = nx.DiGraph(name=flow.name)
    for task, _meta in flow.iter_nodes():
        graph.add_node(step_of(task.name), group=getattr(task, "group", None) or "-")
    for u, v, _meta in flow.iter_links():
        graph.add_edge(step_of(u.name), step_of(v.name))
    if not nx.is_directed_acyclic_graph(graph):
        return graph
    reduced = nx.transitive_reduction(graph)
    reduced.add_nodes_from(graph.nodes(data=True))
    reduced.graph.update(graph.graph)
    return reduced


def steps_in_order(flow) -> list:
    """The flow's tasks in an order that respects every link."""
    by_name = {task.name: task for task, _meta in flow.iter_nodes()}
    graph = nx.DiGraph()
    graph.add_nodes_from(by_name)
    graph.add_edges_from((u.name, v.name) for u, v, _meta in flow.iter_links())
    return [by_name[n] for n in nx.lexicographical_topological_sort(
        graph, key=lambda n: list(by_name).index(n))]
