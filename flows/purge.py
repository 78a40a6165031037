"""The per-VM purge flow: discover, guard, the reversible steps, the point of no return, finalize.

`purge_flow` is the flow factory TaskFlow saves in the journal and calls again on resume, so it is
a module-level function of JSON arguments: the same arguments always build the same flow. The
parts that depend on the instance (its VIFs, iSCSI paths, volumes, ports) come in as
`options["shape"]`, computed once from the facts by `flow_shape` before the purge starts.
"""

import networkx as nx
from taskflow.patterns import linear_flow, unordered_flow

from novapurge.flows.naming import atom_name
from novapurge.flows.retry import RetryTransient
from novapurge.tasks.cinder import DeleteVolume, DetachVolume
from novapurge.tasks.console import DeleteConsoleTokens
from novapurge.tasks.discovery import DiscoverInstance
from novapurge.tasks.files import EmptyQuarantine, QuarantineInstanceDirs
from novapurge.tasks.glance import DeactivateShelvedImage, DeleteShelvedImage
from novapurge.tasks.guards import GuardInstance
from novapurge.tasks.hostfacts import target_key
from novapurge.tasks.hypervisor import DestroyDomain, UndefineDomain, VerifyDomainIdentity
from novapurge.tasks.iscsi import DisconnectIscsiTarget
from novapurge.tasks.mapping import QueueMappingForDelete
from novapurge.tasks.markers import NoteSkippedGroups, PassPointOfNoReturn
from novapurge.tasks.neutron import DeletePort, UnbindPort
from novapurge.tasks.novadb import SoftDeleteInstance
from novapurge.tasks.placement import DeleteAllocations, DeleteDbAllocations
from novapurge.tasks.quota import ReleaseQuotaUsage
from novapurge.tasks.vif import UnplugVif

# The database chain, in order; it follows the host chain.
DB_CHAIN = (SoftDeleteInstance, ReleaseQuotaUsage, QueueMappingForDelete)
DELETE_VOLUMES = ("dot", "all", "none")  # delete_on_termination volumes (Nova's rule), all, none


def flow_shape(facts: dict, *, consoles: bool, cloud: bool, delete_volumes: str = "dot") -> dict:
    """The instance-dependent parts of its flow, as JSON (journaled with the factory arguments)."""
    host = facts.get("host")
    return {
        "host": None if host is None else {
            "vifs": [v["port_id"] for v in host["vifs"] if v["plug"] != "other"],
            "iscsi": [target_key(t) for t in host["iscsi"]]},
        "console": consoles,
        "allocations_api": cloud,
        "shelved_image": bool(facts.get("shelved_image")),
        "volumes": [{"id": v["volume_id"],
                     "delete": delete_volumes == "all" or (delete_volumes == "dot"
                                                           and bool(v["delete_on_termination"]))}
                    for v in facts.get("volumes", [])],
        "ports": [{"id": p["port_id"], "preserve": bool(p["preserve"])}
                  for p in facts.get("ports", [])],
    }


def _together(name, items):
    """The items side by side: the item itself, or an unordered flow when there are several."""
    return items[0] if len(items) == 1 else unordered_flow.Flow(name).add(*items)


def _in_order(name, items):
    """The items one after the other: the item itself, or a linear flow when there are several."""
    return items[0] if len(items) == 1 else linear_flow.Flow(name).add(*items)


def _finalize(vm_uuid, purge_id, name, *tasks):
    """A finalize step in its own subflow, so a transient failure retries just that step."""
    sub = linear_flow.Flow(f"finalize:{vm_uuid}:{name}",
                           retry=RetryTransient(atom_name("RetryTransient", vm_uuid, name)))
    return sub.add(*tasks)


def purge_flow(vm_uuid: str, options: dict) -> linear_flow.Flow:
    """One VM's purge. options: purge_id, force, skip (step groups), hold (stop at the point of
    no return), shape (see flow_shape).

    Built from linear and unordered flows (TaskFlow's graph flow copies its whole graph on every
    link, about half the cost of building a flow): discover, guard, then side by side the
    skipped-groups note and [domain identity check, then side by side the API/placement steps
    and the host chain followed by the database chain], the point of no return, the finalize
    subflows.
    """
    purge_id, skip = options["purge_id"], set(options.get("skip") or ())
    shape = options.get("shape") or {}
    host = shape.get("host") if "host" not in skip else None
    layers = [] if host is None else [
        [DestroyDomain(vm_uuid, purge_id)],
        [UnplugVif(vm_uuid, purge_id, port) for port in host["vifs"]],
        [DisconnectIscsiTarget(vm_uuid, purge_id, key) for key in host["iscsi"]],
        [QuarantineInstanceDirs(vm_uuid, purge_id)],
        [UndefineDomain(vm_uuid, purge_id)]]
    layers += [[step(vm_uuid, purge_id)] for step in DB_CHAIN if step.group not in skip]
    chain = [_together(f"layer:{vm_uuid}:{i}", layer) for i, layer in enumerate(layers) if layer]
    changes = [step(vm_uuid, purge_id) for step in _side_steps(shape, skip)]
    if chain:
        changes.append(_in_order(f"chain:{vm_uuid}", chain))
    gated = [VerifyDomainIdentity(vm_uuid, purge_id)] if host is not None else []
    if changes:
        gated.append(_together(f"changes:{vm_uuid}", changes))
    reversible = [NoteSkippedGroups(vm_uuid, purge_id, sorted(skip))] if skip else []
    if gated:
        reversible.append(_in_order(f"gated:{vm_uuid}", gated))
    flow = linear_flow.Flow(f"purge:{vm_uuid}")
    flow.add(DiscoverInstance(vm_uuid, purge_id),
             GuardInstance(vm_uuid, purge_id, force=bool(options.get("force"))))
    if reversible:
        flow.add(_together(f"reversible:{vm_uuid}", reversible))
    flow.add(PassPointOfNoReturn(vm_uuid, purge_id, hold=bool(options.get("hold"))))
    finalize = list(_finalize_subflows(vm_uuid, purge_id, shape, skip, host is not None))
    if finalize:
        flow.add(_together(f"finalize:{vm_uuid}", finalize))
    return flow


def _side_steps(shape, skip) -> list:
    """Steps beside the host and DB chains (each after the guards, before no return)."""
    steps = [DeleteDbAllocations]
    steps += [DeleteConsoleTokens] if shape.get("console") else []
    steps += [DeleteAllocations] if shape.get("allocations_api") else []
    steps += [DeactivateShelvedImage] if shape.get("shelved_image") else []
    return [step for step in steps if step.group not in skip]


def _finalize_subflows(vm_uuid, purge_id, shape, skip, host):
    if "volumes" not in skip:
        for volume in shape.get("volumes", []):
            tasks = [DetachVolume(vm_uuid, purge_id, volume["id"])]
            tasks += [DeleteVolume(vm_uuid, purge_id, volume["id"])] if volume["delete"] else []
            yield _finalize(vm_uuid, purge_id, f"volume:{volume['id']}", *tasks)
    if "ports" not in skip:
        for port in shape.get("ports", []):
            step = UnbindPort if port["preserve"] else DeletePort
            yield _finalize(vm_uuid, purge_id, f"port:{port['id']}",
                            step(vm_uuid, purge_id, port["id"]))
    if shape.get("shelved_image") and "images" not in skip:
        yield _finalize(vm_uuid, purge_id, "image", DeleteShelvedImage(vm_uuid, purge_id))
    if host:
        yield _finalize(vm_uuid, purge_id, "quarantine", EmptyQuarantine(vm_uuid, purge_id))


def tasks_and_links(flow):
    """Every task of the flow (subflows opened up) and the task-level ordering links."""
    nodes, links = [], []

    def walk(item):
        if not hasattr(item, "iter_nodes"):
            nodes.append(item)
            return [item], [item]
        members = [n for n, _ in item.iter_nodes()]
        spans = {id(m): walk(m) for m in members}
        if isinstance(item, linear_flow.Flow):
            for a, b in zip(members, members[1:]):
                links.extend((x, y) for x in spans[id(a)][1] for y in spans[id(b)][0])
            return spans[id(members[0])][0], spans[id(members[-1])][1]
        for u, v, _ in item.iter_links():
            links.extend((x, y) for x in spans[id(u)][1] for y in spans[id(v)][0])
        heads = [m for m in members if not any(v is m for _, v, _ in item.iter_links())]
        tails = [m for m in members if not any(u is m for u, _, _ in item.iter_links())]
        return ([x for m in heads for x in spans[id(m)][0]],
                [x for m in tails for x in spans[id(m)][1]])

    walk(flow)
    return nodes, links


def step_graph(flow) -> nx.DiGraph:
    """The flow's steps and their ordering as a networkx graph (for `plan --graph`)."""
    graph = nx.DiGraph(name=flow.name)
    nodes, links = tasks_and_links(flow)
    for task in nodes:
        graph.add_node(_label(task), group=getattr(task, "group", None) or "-")
    for u, v in links:
        graph.add_edge(_label(u), _label(v))
    if not nx.is_directed_acyclic_graph(graph):
        return graph
    reduced = nx.transitive_reduction(graph)
    reduced.add_nodes_from(graph.nodes(data=True))
    reduced.graph.update(graph.graph)
    return reduced


def _label(task) -> str:
    """A step's name in the graph: the step, plus its detail (port, target) when it has one."""
    parts = task.name.split(":", 2)
    return parts[0] if len(parts) < 3 else f"{parts[0]}:{parts[2]}"


def steps_in_order(flow) -> list:
    """The flow's tasks in an order that respects every link."""
    nodes, links = tasks_and_links(flow)
    by_name = {task.name: task for task in nodes}
    order = list(by_name)
    graph = nx.DiGraph()
    graph.add_nodes_from(by_name)
    graph.add_edges_from((u.name, v.name) for u, v in links)
    return [by_name[n] for n in nx.lexicographical_topological_sort(graph, key=order.index)]
