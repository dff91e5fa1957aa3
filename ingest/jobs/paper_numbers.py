"""The paper's published numbers (method.md 8), printed beside ours in the report, always marked as
the paper's. Accuracy and faithfulness in percent; parameter ratios in percent of base + trainable.

Keys: method labels as the experiment job names them (ingest/jobs/experiment.py), "circuitlora_u-8-32"
for CircuitLoRA_U (critical layers from a union circuit, method.md 5); tasks by their defaults key
(analysis.training.defaults_key: add_sub_300, mul_div, ...).
"""

from __future__ import annotations

TABLE1_TASKS = ("add_sub_300", "mul_div", "sequence", "lcm", "function")
TABLE4_TASKS = ("add_sub_100", "add_sub_200", "add_sub_400", "add_sub_500")
TABLE3_TASKS = ("compositional",)
FIGURE4_TASKS = ("add_sub_200", "add_sub_300", "add_sub_400", "add_sub_500")


def _columns(tasks: tuple[str, ...], table: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    return {label: dict(zip(tasks, values)) for label, values in table.items()}


# method.md 8 item 10 (Table 1, mean of 5 seeds) and item 16 (the rebuttal's AdaLoRA row)
TABLE1 = _columns(TABLE1_TASKS, {
    "pretrained": (18.30, 39.75, 15.70, 18.80, 32.00),
    "full": (79.20, 95.75, 91.50, 91.40, 100.00),
    "lora-r2": (72.60, 90.00, 67.10, 86.40, 84.10),
    "lora-r8": (78.30, 94.25, 79.60, 91.20, 96.80),
    "lora-r16": (78.40, 95.50, 83.40, 91.20, 97.30),
    "lora-r32": (80.50, 96.25, 92.70, 92.80, 98.60),
    "circuitlora-8-32": (82.70, 96.00, 92.20, 92.60, 99.40),
    "randomlora-8-32": (77.50, 95.50, 81.70, 90.40, 97.70),
    "circuitlora-16-64": (83.10, 97.00, 94.60, 93.00, 99.50),
    "randomlora-16-64": (79.10, 95.75, 92.10, 92.00, 98.50),
    "adalora": (76.70, 92.75, 90.10, 89.80, 98.20),
})

# method.md 8 item 11 (Table 4, App. J)
TABLE4 = _columns(TABLE4_TASKS, {
    "pretrained": (46.90, 24.90, 12.20, 9.90),
    "full": (96.80, 90.50, 75.30, 63.60),
    "lora-r2": (94.40, 82.90, 68.90, 55.60),
    "lora-r8": (95.40, 86.40, 73.10, 64.30),
    "lora-r16": (96.70, 87.80, 77.90, 68.30),
    "lora-r32": (97.40, 90.30, 78.20, 69.70),
    "circuitlora-8-32": (96.90, 90.40, 77.90, 70.60),
    "randomlora-8-32": (95.70, 87.30, 73.30, 63.70),
    "circuitlora-16-64": (97.90, 91.00, 78.20, 73.00),
    "randomlora-16-64": (97.00, 89.60, 77.70, 64.20),
})

# method.md 8 item 14 (Table 3, compositional; CircuitLoRA_C is the plain circuitlora label there)
TABLE3 = _columns(TABLE3_TASKS, {
    "pretrained": (0.90,), "lora-r2": (59.60,), "lora-r8": (60.50,), "lora-r16": (61.10,),
    "lora-r32": (64.70,), "circuitlora-8-32": (67.20,), "circuitlora_u-8-32": (65.50,),
    "randomlora-8-32": (62.30,),
})
TABLE3_ROWS = tuple(TABLE3)

# method.md 8 item 10 / 16: parameter ratio, percent
PARAMETER_RATIO = {"pretrained": 0.0, "full": 100.0, "lora-r2": 0.1111, "lora-r8": 0.4428, "lora-r16": 0.8816,
                   "lora-r32": 1.7479, "circuitlora-8-32": 0.7175, "randomlora-8-32": 0.7175,
                   "circuitlora-16-64": 1.4248, "randomlora-16-64": 1.4248, "adalora": 1.7481}

# method.md 5 / 8 item 15: union-circuit faithfulness when it keeps the top x% of edges
UNION_CURVE = {0.01: 67.4, 0.02: 79.4, 0.03: 83.7, 0.04: 87.2, 0.05: 89.2, 0.06: 89.4, 0.08: 89.6, 0.10: 89.7}
UNION_FAITHFULNESS = 89.18
COMPOSITIONAL_FAITHFULNESS = 96.86


def paper_accuracy(label: str, task: str) -> float | None:
    """The paper's accuracy for a method label on a task (None: the paper has no such cell)."""
    for table in (TABLE1, TABLE4, TABLE3):
        value = table.get(label, {}).get(task)
        if value is not None:
            return value
    return None


def table_of(task: str) -> str:
    """Which of the paper's tables a task's column belongs to."""
    if task in TABLE1_TASKS:
        return "Table 1"
    if task in TABLE4_TASKS:
        return "Table 4"
    if task in TABLE3_TASKS or task.startswith("compositional"):
        return "Table 3"
    return "Other tasks"
