# The two entry points of the README, plus conveniences. Every target bootstraps first.
.PHONY: demo test check lint stack-up stack-down stack-status bootstrap bootstrap-test

VENV := .venv/bin

bootstrap:
	@bash scripts/bootstrap.sh

## demo: start Kafka, PostgreSQL and the projector, then drive assessments through their lifecycle
demo: bootstrap
	$(VENV)/assessment-store stack up
	$(VENV)/assessment-store demo

bootstrap-test:
	@bash scripts/bootstrap.sh --for-tests

## test: type-check, then run the whole test suite against a private real stack
test: bootstrap-test
	$(VENV)/mypy
	$(VENV)/pytest --junitxml=.data/junit.xml

stack-up: bootstrap
	$(VENV)/assessment-store stack up

stack-down:
	$(VENV)/assessment-store stack down

stack-status:
	$(VENV)/assessment-store stack status
