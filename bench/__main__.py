"""``python -m bench``: run every scenario and write bench/results.json and bench/RESULTS.md."""

import asyncio

from bench.run import main

asyncio.run(main())
