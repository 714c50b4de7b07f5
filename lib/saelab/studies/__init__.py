"""Studies of trained SAEs: features and the browser, geometry, steering, ground truth, plots.

Built on `saelab.core`; the notebooks 05-10 are their main users. See ARCHITECTURE.md.
"""
