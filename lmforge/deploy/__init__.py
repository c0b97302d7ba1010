"""`lmforge deploy`: inspect, plan, choose a precision, quantize, export, evaluate, benchmark, report."""
