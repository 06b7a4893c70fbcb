"""Never listed in LEVIPANEL_STRATEGY_MODULES: importing it would be a bug (it says so)."""

IMPORTED = True

raise RuntimeError("this module must never be imported by the engine")
