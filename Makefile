.PHONY: setup test lint up
setup:
	scripts/setup
test:
	scripts/test
lint:
	scripts/lint
up:
	inferq up
