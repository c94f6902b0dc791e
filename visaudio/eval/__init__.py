"""Offline evaluation of ViSAudio: spatial metrics (``metrics``), systems and baselines
(``baselines``), the run with bootstrap statistics (``runner``) and the HTML report (``report``).

Nothing here loads a pretrained network: the paper's FD_VGG / KL_PANN / DeSync / IB cannot run
offline, so every number is an interaural or signal metric written from its formula.
"""
