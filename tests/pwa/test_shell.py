import pytest

pytestmark = pytest.mark.browser


def test_page_loads_and_reports_service_health(live_server, page):
    page.goto(live_server + "/")
    status = page.locator("#health")
    status.wait_for()
    page.wait_for_function("document.getElementById('health').classList.contains('ok')", timeout=10000)
    assert "Service OK" in status.inner_text()
    assert page.title().startswith("Firegrid")
