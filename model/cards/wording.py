"""The card's fixed sentences, shared by the schema (``card``) and its Markdown (``markdown``)."""

#: Said wherever a twin-trained model's outputs are shown (log, CSV sidecar, plot titles).
TWIN_WARNING = ("This model was trained on the synthetic DISFA twin, not on real faces: its "
                "outputs on real faces mean nothing.")

#: ``metrics["source"]`` values and how the summary line names them.
METRIC_SOURCES = {"held-out fold": "held-out fold", "crossval": "crossval of the same recipe",
                  "none": "no held-out estimate"}
