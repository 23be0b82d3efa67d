"""One module per protocol a client speaks; each a straight-line handler that ends by
handing a tunnel to core. Imports core/ and codec/, never server/ or ops/.
"""
