"""Write docs/figures/credit_explorer.png: the demo group for HSD, AntiSD and AMR-SD, with the
tooltip of the token where failed rollout #1 departs from its HSD peer.

    PYTHONPATH=$PWD python tests/ui/screenshot.py [--out docs/figures/credit_explorer.png]

Same server and browser as the tests (tests/ui/conftest.py): the embedded model, Debian's
headless Chromium, nothing but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # the tests' browser and page helpers (tests/ui is no package)

from client.launcher import ServerProcess
from server.settings import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parents[2]
METHODS = ("hsd", "antisd", "amrsd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "figures" / "credit_explorer.png"))
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=1180)
    args = parser.parse_args()
    env = {
        "TC_MODEL": str(DEFAULT_MODEL_DIR),
        "TC_DEVICE": "cpu",
        "TC_DTYPE": "float32",
        "TC_LOG_LEVEL": "warning",
        "TC_UI": "true",
    }
    profile = tempfile.mkdtemp(prefix="tc-ui-shot-")
    with ServerProcess(env=env) as server:
        driver = conftest.launch_chromium(profile, args.width, args.height)
        try:
            conftest.open_page(driver, server, key=None)
            driver.find_element("id", "demo").click()
            for box in driver.find_elements("css selector", "#methods input"):
                if (box.get_attribute("value") in METHODS) != box.is_selected():
                    box.click()
            driver.find_element("id", "run").click()
            conftest.wait(driver, 120).until(
                lambda d: "methods scored" in d.find_element("id", "status").text
            )
            chip = driver.find_element("css selector", '.tok.diverge[data-method="hsd"]')
            ActionChains(driver).move_to_element(chip).perform()
            conftest.wait(driver, 5).until(lambda d: d.find_element("id", "tooltip").is_displayed())
            bottom = driver.execute_script(
                "return document.querySelector('.grid').getBoundingClientRect().bottom"
            )
            driver.save_screenshot(args.out)
            # Drop the empty window below the heatmaps.
            with Image.open(args.out) as shot:
                shot.crop((0, 0, shot.width, min(shot.height, int(bottom) + 16))).save(args.out)
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    print(args.out)


if __name__ == "__main__":
    main()
