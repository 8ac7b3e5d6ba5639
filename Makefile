# Shortcuts; each target calls dev.py, which needs only Python 3.11+.
.PHONY: run test bench lint

run:
	python3 dev.py run

test:
	python3 dev.py test

bench:
	python3 dev.py bench

lint:
	python3 dev.py test --co -q >/dev/null && .venv/bin/ruff format --check gateway tests bench dev.py
