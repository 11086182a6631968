"""The four stages of DataElixir (AAAI 2024), one module each; ``detoxops.defenses.dataelixir`` composes them.

- ``candidates``: n rounds of forward noising to T + reverse process; the last m intermediaries of each round,
  labelled by the victim, with their distance to the original (candidate-set construction).
- ``transitions``: transition coefficient η and the benign / poisoned / suspicious split (equation 3).
- ``target_label``: per-label KL and count metrics over the anomalous samples' candidates, MAD anomaly index.
- ``purify``: the purified image at the 80th percentile of the distance (equation 5).
- ``relabel``: labels of suspicious target-label samples from a benign model trained on the purified set.
- ``shards``: streaming, resumable shard storage (npz arrays, no pickle).
"""
