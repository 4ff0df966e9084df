"""The built-in bana stages. Each module exposes ``stage``, a banacli.stage.Stage, named by an
entry point in the ``bana.stages`` group (see pyproject.toml), exactly as a third party would."""
