"""A bare generation context (``common.ports.GenerationContext``) for calling a generator
directly, without a job runner: no lease, no markers recorded, nothing stored."""

from __future__ import annotations


class BareContext:
    def __init__(self, creation_id: str = "c1", owner: str = "exec/1", operation=None) -> None:
        self.creation_id, self.lease_owner = creation_id, owner
        self.existing_operation, self.output_prefix, self.start_marker = operation, None, None

    def report_progress(self, percent):
        pass

    def record_operation(self, operation):
        self.existing_operation = operation

    def heartbeat(self):
        pass

    def mark_start(self):
        return "m"

    def clear_start(self):
        pass

    def start_marker_age(self):
        return 0.0

    def output_prefix_for(self, marker):
        return None

    def find_outputs(self, marker):
        return []
