import numpy as np
import pytest

from detoxops.metrics import (
    attack_success_rate,
    clean_accuracy,
    confusion_matrix,
    detection_rates,
    evaluate_backdoor,
    poisoned_accuracy,
)


def test_accuracy_asr_pa_on_hand_made_predictions():
    assert clean_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    trig_true = np.array([1, 2, 3, 4, 5])
    trig_pred = np.array([0, 0, 3, 0, 5])
    assert attack_success_rate(trig_pred, target=0) == pytest.approx(0.6)
    assert poisoned_accuracy(trig_pred, trig_true) == pytest.approx(0.4)


def test_detection_rates_count_label_changes():
    raw = np.array([0, 0, 0, 3, 4, 5])
    purified = np.array([1, 0, 2, 3, 9, 5])
    poisoned = np.array([True, True, True, False, False, False])
    tpr, fpr = detection_rates(raw, purified, poisoned)
    assert tpr == pytest.approx(2 / 3)
    assert fpr == pytest.approx(1 / 3)
    tpr, fpr = detection_rates(raw, raw, np.zeros(6, bool))
    assert np.isnan(tpr) and fpr == 0.0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no samples"):
        clean_accuracy(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        clean_accuracy(np.array([1, 2, 3]), np.array([1, 2]))
    with pytest.raises(ValueError, match="shapes differ"):
        detection_rates(np.array([1]), np.array([1, 2]), np.array([True]))


def test_evaluate_backdoor_uses_the_predict_function():
    clean = np.zeros((4, 2, 2, 3), np.uint8)
    trig = np.full((3, 2, 2, 3), 255, np.uint8)

    def predict_fn(images):  # a "backdoored" model: bright → class 0, dark → class 1
        return np.where(images.mean(axis=(1, 2, 3)) > 128, 0, 1)

    out = evaluate_backdoor(predict_fn, clean, np.array([1, 1, 2, 1]), trig, np.array([1, 2, 3]), target=0)
    assert out == {"ca": 0.75, "pa": 0.0, "asr": 1.0}
    with pytest.raises(ValueError, match="exclude target-class"):
        evaluate_backdoor(predict_fn, clean, np.array([1, 1, 2, 1]), trig, np.array([0, 2, 3]), target=0)


def test_confusion_matrix_counts():
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def test_percent_is_for_display_only():
    from detoxops.metrics import percent, percent_rates

    assert percent(0.25) == 25.0 and percent(None) is None
    row = {"defense": "none", "ca": 0.5, "asr": 1.0, "images_per_s": 3.0, "n_clean": 4, "map_auc": 0.9}
    assert percent_rates(row) == {"defense": "none", "ca": 50.0, "asr": 100.0, "images_per_s": 3.0, "n_clean": 4,
                                  "map_auc": 0.9}
    assert row["ca"] == 0.5  # a copy


def test_fraction_rates_reads_a_percent_table_back():
    from detoxops.metrics import fraction_rates, percent_rates

    stored = {"setting": "none", "ca": 87.5, "pa": 12.5, "asr": 100, "n_clean": 40, "flag": True, "map_auc": 0.9}
    assert fraction_rates(stored) == {"setting": "none", "ca": 0.875, "pa": 0.125, "asr": 1.0, "n_clean": 40,
                                      "flag": True, "map_auc": 0.9}
    assert percent_rates(fraction_rates(stored)) == {**stored, "asr": 100.0}
