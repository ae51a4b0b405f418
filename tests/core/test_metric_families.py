"""KumoMTA's metric renderings: the text keeps KumoMTA's names, the JSON has KumoMTA's shape.

The JSON shapes asserted here are the ones KumoMTA's own registry tests state
(crates/kumo-prometheus/src/registry.rs): no labels → a number, one label → a map of
label value to number, several labels → a list of objects with "@" for the value.
"""

import json

from prometheus_client.parser import text_string_to_metric_families

from trimta.core.metric_families import Family, HistogramValue, json_document, render_json, render_text


def test_a_counter_without_labels_is_a_number():
    assert json_document([Family("family_name", "", "counter").set(0)]) == {
        "family_name": {"type": "counter", "value": 0}}


def test_one_label_is_a_map_of_its_values():
    family = Family("family_name", "me", "counter", ("label_name",))
    family.add(("label_value",), 0)
    family.add(("2nd",), 3)
    assert json.loads(render_json([family])) == {
        "family_name": {"help": "me", "type": "counter", "value": {"label_name": {"label_value": 0, "2nd": 3}}}}


def test_several_labels_are_a_list_with_the_value_at_at():
    family = Family("family_name", "", "counter", ("first_label_name", "2nd_label_name"))
    family.add(("first_label_value", "2nd_label_value"), 0)
    assert json_document([family])["family_name"]["value"] == [
        {"first_label_name": "first_label_value", "2nd_label_name": "2nd_label_value", "@": 0}]


def test_a_histogram_has_count_sum_avg_and_buckets_without_inf():
    value = HistogramValue(((0.005, 1), (0.01, 3), (float("inf"), 4)), sum=0.04, count=4)
    got = json_document([Family("hist_name", "hist_help", "histogram").set(value)])
    assert got == {"hist_name": {"help": "hist_help", "type": "histogram", "value": {
        "count": 4, "sum": 0.04, "avg": 0.01, "bucket": [[0.005, 1.0], [0.01, 3.0]]}}}


def test_a_family_without_samples_has_a_null_value_and_nan_becomes_null():
    nan = Family("g", "", "gauge").set(float("nan"))
    assert json_document([Family("empty", "", "gauge"), nan]) == {
        "empty": {"type": "gauge", "value": None}, "g": {"type": "gauge", "value": None}}


def test_text_keeps_kumomta_counter_names_and_prometheus_parses_it():
    delivered = Family("total_messages_delivered", "total number of messages ever delivered", "counter",
                       ("service",))
    delivered.add(("smtp_client",), 7)
    delivered.add(('smtp_client:a->"b"@smtp_client',), 2)
    hist = Family("lat", "latency\nof things", "histogram", ("service",))
    hist.add(("x",), HistogramValue(((0.5, 1), (float("inf"), 2)), sum=1.5, count=2))
    text = render_text([delivered, hist])
    assert "# TYPE total_messages_delivered counter\n" in text
    assert 'total_messages_delivered{service="smtp_client"} 7\n' in text
    assert "_total" not in text
    assert 'lat_bucket{service="x",le="+Inf"} 2' in text
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.labels["service"]: s.value for s in parsed["total_messages_delivered"].samples}
    assert samples == {"smtp_client": 7, 'smtp_client:a->"b"@smtp_client': 2}
    assert parsed["lat"].documentation == "latency\nof things"
