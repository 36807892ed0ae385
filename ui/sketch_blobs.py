"""The Sketchpad's blob route, bounded (issue 14): while a person draws, the browser uploads each layer as a blob
that gradio keeps per drawing, unbounded. Here a layer index beyond MAX_BLOB_LAYERS is dropped, and at most
BLOB_BUDGET bytes of blobs are kept across sessions (the oldest drawing dropped first)."""
from __future__ import annotations

from . import gradio_seam

MAX_BLOB_LAYERS = 4               # Sketchpad layers accepted on the blob route (the Sketchpads here have one)
BLOB_BUDGET = 32 * 2**20          # bytes of Sketchpad blobs kept, across sessions


class BlobPolicy:
    """Which blobs an editor keeps: layer indexes in [0, max_layers), at most `budget` bytes (oldest first out)."""

    def __init__(self, max_layers: int = MAX_BLOB_LAYERS, budget: int = BLOB_BUDGET):
        self.max_layers, self.budget = max_layers, budget

    def admit(self, upload_id, index: int | None) -> bool:
        return index is None or 0 <= index < self.max_layers

    def kept(self, store, upload_id) -> None:
        if upload_id in store:
            store.move_to_end(upload_id)
        while len(store) > 1 and sum(gradio_seam.blob_bytes(v) for v in store.values()) > self.budget:
            store.popitem(last=False)


def cap_editor_blobs(blocks, max_layers: int = MAX_BLOB_LAYERS, budget: int = BLOB_BUDGET) -> int:
    """Every ImageEditor / Sketchpad in `blocks` gets the policy above. Returns how many editors were capped."""
    found = gradio_seam.editors(blocks)
    for editor in found:
        gradio_seam.wrap_blob_route(editor, BlobPolicy(max_layers, budget))
    return len(found)
