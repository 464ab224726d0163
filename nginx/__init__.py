"""nginx's config template for inferq (``inferq.conf.template``), shipped as package data so
``inferq up`` finds it in a plain (non-editable) install too; see inferq/local/nginx.py."""
