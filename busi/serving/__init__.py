"""busi as an HTTP service (busi-serve): the model on LitServe, the guards in front of it, what it says about itself."""
