from trimta.cli import main

raise SystemExit(main())
