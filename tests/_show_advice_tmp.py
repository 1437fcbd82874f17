import test_compare as t
orig = t.advise
def spy(*a, **k):
    adv = orig(*a, **k)
    print("\n==", adv.recommendation, "|", adv.next_step)
    for r in adv.reasons: print("  -", r)
    for e in adv.evidence: print("  *", e.text)
    return adv
t.advise = spy
