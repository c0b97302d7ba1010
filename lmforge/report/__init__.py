"""`lmforge report`: results of benchmarks and deploys as one HTML page (and Markdown) with plots."""
