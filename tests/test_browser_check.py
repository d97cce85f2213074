"""The report checker in real headless Chromium: a console error or a broken plot fails the page
(the good pages are checked in tests/test_bench.py)."""
from evo.browser_check import check_page


def test_checker_fails_on_console_errors_and_broken_plots(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img class="plot" alt="broken" src="data:image/png;base64,AAAA">'
                    '<script>console.error("boom")</script></body></html>')
    result = check_page(page, tmp_path / "bad.png")
    assert not result.ok and result.broken == ["broken"] and any("boom" in e for e in result.console_errors)
