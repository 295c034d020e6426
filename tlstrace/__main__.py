from tlstrace.cli import main

raise SystemExit(main())
