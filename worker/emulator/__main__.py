"""``python -m worker.emulator``: the same command as ``listsync emulator``."""

from worker.emulator.cli import emulator

if __name__ == "__main__":
    emulator()
