"""The TRA-Net paper's published numbers (percent), for side-by-side reports.

Source: the paper's Table 1 (TRA column: F1-frame and accuracy on DISFA, 3-fold, mean of folds)
and Table 2 (F1-frame of the ablation variants). The paper selected its model on the test fold
and, as every public implementation of its protocol does, counted intensity >= 2 as positive
(see DISFA_FACTS); both differ from this toolkit's defaults, and every report says which
protocol produced our numbers.
"""
from __future__ import annotations

PAPER_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
PAPER_PROTOCOL = ("paper: label threshold intensity >= 2 (peers' reading of 'C-level'), model "
                  "selected on the test fold, sigmoid threshold 0.5, frames pooled per fold, mean "
                  "of 3 folds")

#: Table 1, TRA column.
TABLE1_TRA = {
    "f1": (56.9, 61.5, 72.6, 45.2, 46.0, 67.5, 89.5, 33.1),
    "f1_avg": 59.0,
    "accuracy": (97.3, 97.9, 93.5, 96.2, 97.6, 94.2, 95.9, 94.3),
    "accuracy_avg": 95.9,
}

#: Table 2 rows, keyed by this toolkit's variant names (model.tranet.VARIANTS): (F1 per AU, avg).
#: The full model's row is Table 1's TRA column.
TABLE2_F1 = {
    "senet50": ("SENet-50", (27.4, 25.8, 70.3, 29.3, 36.6, 64.1, 88.7, 34.0), 47.0),
    "senet50_cbam": ("SENet-50 + CBAM", (35.4, 39.4, 66.9, 31.2, 39.4, 67.4, 89.9, 30.0), 49.9),
    "senet50_hm": ("SENet-50 + HM", (33.0, 37.0, 58.1, 46.7, 50.0, 68.7, 90.2, 31.5), 51.9),
    "hm_cbam_no_channel": ("SENet-50 + HM + CBAM w/o AT",
                           (45.2, 47.8, 66.5, 41.1, 41.3, 72.3, 87.1, 41.0), 55.3),
    "hm_cbam_no_spatial": ("SENet-50 + HM + CBAM w/o ST",
                           (45.2, 45.8, 65.8, 47.3, 55.1, 70.5, 89.4, 33.3), 56.2),
    "tranet_residual": ("TRA-Net with residual structure",
                        (48.9, 49.4, 63.1, 46.8, 47.3, 70.2, 89.8, 34.8), 56.3),
    "tranet": ("TRA-Net", TABLE1_TRA["f1"], TABLE1_TRA["f1_avg"]),
}

#: Table 2's row order.
TABLE2_ORDER = ("senet50", "senet50_cbam", "senet50_hm", "hm_cbam_no_channel",
                "hm_cbam_no_spatial", "tranet_residual", "tranet")
