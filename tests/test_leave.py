"""How the console script ends its process (ntk_bridge.leave): the exit status and every line of output kept
when the teardown is skipped, and the ordinary exit whenever something else still runs."""
import multiprocessing
import subprocess
import sys
import threading

from ntk_bridge import leave

_ENTRY = "from ntk_bridge.cli import entry; entry()"


def test_the_exit_status_and_all_output_survive_a_piped_stdout():
    ordinary = "import sys; from ntk_bridge.cli import main; sys.exit(main())"
    for args in (["--help"], ["sweep", "--help"]):
        fast, slow = (subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
                      for code in (_ENTRY, ordinary))
        assert fast.returncode == slow.returncode == 0
        assert fast.stdout == slow.stdout and fast.stdout.count("\n") > 10
    bad = subprocess.run([sys.executable, "-c", _ENTRY, "sweep", "--depth", "32..2"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and bad.stderr.count("\n") == 1


def test_a_live_child_process_or_foreign_thread_means_the_ordinary_exit():
    assert leave._quiet()
    child = multiprocessing.get_context("spawn").Process(target=input)  # waits: no stdin in the child
    stop = threading.Event()
    child.start()
    try:
        assert not leave._quiet()
    finally:
        child.kill()
        child.join()
    assert leave._quiet()
    worker = threading.Thread(target=stop.wait, name="somebody's thread")
    worker.start()
    try:
        assert not leave._quiet()
    finally:
        stop.set()
        worker.join()
    assert leave._quiet()
