"""render_attributions: escaping, colours, legend."""
import re

import kx_spacy


def test_render_escapes_and_colours(textcat_nlp):
    textcat_nlp.add_pipe("kx_attributor")
    doc = textcat_nlp('<script>alert("x")</script> the movie was good & "fun"')
    html = kx_spacy.render_attributions([doc], page=True)
    assert "<script>" not in html and "alert(\"x\")" not in html
    assert "&lt;" in html and "&gt;" in html and "&quot;" in html  # tokens like "<", ">" escaped
    assert html.startswith("<!DOCTYPE html>")
    label = next(iter(doc._.kx_attributions))
    assert f">{label}<" in html
    colours = re.findall(r"background:rgba\((\d+),(\d+),(\d+),([\d.]+)\)", html)
    assert len(colours) == len(doc)
    alphas = [float(a) for *_, a in colours]
    assert max(alphas) > 0.8  # the largest |score| gets the strongest colour
    scores = doc._.kx_attributions[label]["scores"]
    for (r, _, b, a), s in zip(colours, scores):
        if float(a) > 0.01:
            assert (int(r) > int(b)) == (s > 0)  # red pushes up, blue down
    assert "kx-legend" in html


def test_render_escapes_labels_and_handles_no_records(en_nlp):
    from spacy.tokens import Doc

    from kx_spacy import install_extensions

    install_extensions()
    doc = en_nlp.make_doc("plain text")
    assert "No attributions" in kx_spacy.render_attributions(doc)
    doc._.kx_attributions = {
        "<img src=x onerror=alert(1)>": {"scores": [0.5, -0.25], "f_x": 0.9, "f_baseline": 0.65, "error": 0.0, "steps": 4}
    }
    html = kx_spacy.render_attributions([doc])
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert isinstance(doc, Doc)
