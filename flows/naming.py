"""Atom names: deterministic, unique and stable, built in one place."""


def atom_name(step: str, vm_uuid: str, detail: str = "") -> str:
    """`Step:vm_uuid[:detail]`, e.g. `UnplugVif:<vm>:<port>`; never derived from module paths."""
    return f"{step}:{vm_uuid}:{detail}" if detail else f"{step}:{vm_uuid}"


def step_of(atom: str) -> str:
    return atom.split(":", 1)[0]


def vm_of(atom: str) -> str:
    return atom.split(":")[1]
