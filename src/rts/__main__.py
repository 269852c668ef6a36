from rts.cli import main

raise SystemExit(main())
