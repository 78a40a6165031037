"""`novapurge submit`: journal a purge and post one jobboard job per VM for conductors to run.

Each VM is checked here first, as `purge` does (its guards, the domain on its host, the drivers
it needs), so a refusal reaches the operator at once; a VM that passes gets its FlowDetail in
the shared journal and one job whose details name that flow detail. Any conductor sharing the
journal and the jobboard claims the job and runs the flow (distributed.conductor).
"""

import logging

from novapurge.flows.batch import DEFAULT_PARALLEL, Batch, Outcome
from novapurge.flows.run import OpenedBook

LOG = logging.getLogger(__name__)
QUEUED = "queued"


def job_details(purge_id: str, vm_uuid: str, flow_uuid: str) -> dict:
    """What a job carries: the flow detail to run (TaskFlow's `flow_uuid`), and for whom."""
    return {"flow_uuid": flow_uuid, "purge_id": purge_id, "vm_uuid": vm_uuid}


def submit(purger, board, vm_uuids, force=False, skip=(), delete_volumes="dot", hold=False, *,
           on_start=None, parallel=DEFAULT_PARALLEL, progress=None):
    """(purge_id, outcomes): each VM `queued` (message: its job), `refused` or `nothing-to-do`."""
    book = purger.new_book(vm_uuids, force, skip, delete_volumes, hold, submitted=True)
    opened = OpenedBook(purger.journal, book, on_start)

    def post(vm_uuid, batch):
        flow_detail = purger.journal_vm(vm_uuid, opened, batch)
        if isinstance(flow_detail, Outcome):
            return flow_detail
        job = board.post(f"purge:{vm_uuid}", book=book,
                         details=job_details(book.uuid, vm_uuid, flow_detail.uuid))
        LOG.info("%s: posted job %s", vm_uuid, job.uuid)
        return Outcome(vm_uuid, QUEUED, f"job {job.uuid}")

    outcomes = Batch(parallel, progress).run(vm_uuids, post)
    if opened.saved:
        purger.note_not_run(book, outcomes)
    return (book.uuid if opened.saved else None), outcomes
