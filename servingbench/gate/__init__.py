"""The regression gate: rounds of server lifetimes, their calibration, and a verdict per metric whose false-alarm
rate and power are what it prints (README "The gate's statistics"; simulated in ``simulate.py``)."""
