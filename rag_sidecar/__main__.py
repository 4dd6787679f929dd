import sys

from rag_sidecar.cli import main

sys.exit(main())
